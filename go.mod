module github.com/smimefilter/smimefilter

go 1.26
