package main

import (
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// TestDocsNameEveryKey: every key Config accepts is documented in
// smimefilter.toml(5), in the example configuration and in the README's
// table, under its own table; limits.max_copies, which is ignored, only in
// the note that says so.
func TestDocsNameEveryKey(t *testing.T) {
	read := func(name string) string {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	man := read("../../packaging/man/smimefilter.toml.5")
	example := read("../../packaging/etc/smimefilter.toml")
	readme := read("../../README.md")
	known := knownKeys()
	keys := make([]string, 0, len(known))
	for k, kind := range known {
		if kind != keyTable {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, key := range keys {
		i := strings.LastIndexByte(key, '.')
		table, leaf := key[:i], key[i+1:]
		header := "[" + table + "]"
		if table == "rewrite" {
			header = "[[rewrite]]"
		}
		// The man page: ".B leaf" (or ".B [policy.domains]") in the
		// section of its table.
		manEntry := ".B " + leaf + "\n"
		if known[key] == keyMap {
			manEntry = ".B [" + key + "]\n"
		}
		if sec := section(man, ".SH "+header+"\n", "\n.SH "); !strings.Contains(sec, manEntry) {
			t.Errorf("smimefilter.toml(5): section %s lacks %q", header, strings.TrimSpace(manEntry))
		}
		// The example: "leaf =" or "# leaf =" in its table's block, or the
		// map's own table header.
		line := regexp.MustCompile(`(?m)^(# ?)?` + regexp.QuoteMeta(leaf) + ` +=`)
		if known[key] == keyMap {
			line = regexp.MustCompile(`(?m)^(# ?)?\[` + regexp.QuoteMeta(key) + `\]`)
		}
		exampleHeader := header
		if table == "rewrite" {
			exampleHeader = "# [[rewrite]]"
		}
		if sec := section(example, exampleHeader+"\n", "\n["); !line.MatchString(sec) {
			t.Errorf("packaging/etc/smimefilter.toml: block %s lacks %s", exampleHeader, leaf)
		}
		// The README: "`table.leaf" (also "`policy.domains.<domain>`"), or
		// for [[rewrite]], "`[[rewrite]] match`" and "`replace`".
		table2 := section(readme, "## Configuration reference\n", "\n### ")
		if !strings.Contains(table2, "`"+key) && !strings.Contains(table2, "`"+header+" "+leaf+"`") &&
			!(table == "rewrite" && strings.Contains(table2, "`"+leaf+"`")) {
			t.Errorf("README.md configuration reference lacks `%s`", key)
		}
	}

	for name, text := range map[string]string{"smimefilter.toml(5)": man, "README.md": readme} {
		for _, para := range paragraph.Split(text, -1) {
			if strings.Contains(para, "max_copies") && !strings.Contains(para, "no longer used") {
				t.Errorf("%s mentions max_copies outside the note that it is no longer used:\n%s", name, para)
			}
		}
	}
	if strings.Contains(example, "max_copies") {
		t.Errorf("packaging/etc/smimefilter.toml still documents max_copies")
	}
}

// paragraph separates README paragraphs and man page paragraphs.
var paragraph = regexp.MustCompile(`\n\n|\n\.(PP|TP|SH)\b`)

// section is the part of text from the line start to the next end, or "".
func section(text, start, end string) string {
	i := strings.Index(text, start)
	if i < 0 {
		return ""
	}
	rest := text[i+len(start):]
	if j := strings.Index(rest, end); j >= 0 {
		return rest[:j]
	}
	return rest
}
