// Command lmtp-send sends one message file over LMTP with smimefilter's
// own outbound client (deliver.Pool: MAIL, RCPT and DATA pipelined, the
// body dot-stuffed in bulk, 32 KiB writes) and prints the seconds from
// connecting to the last reply. bench/smime-large.sh uses it to time how
// fast smtp-sink can take in a message of a given size at all: the least
// any relay to smtp-sink can take.
//
//	lmtp-send -socket PATH [-from A] [-to B] FILE
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/smimefilter/smimefilter/deliver"
)

func main() {
	socket := flag.String("socket", "", "LMTP server's Unix socket")
	from := flag.String("from", "a@example.net", "envelope sender")
	to := flag.String("to", "rcpt@example.org", "recipient")
	flag.Parse()
	if *socket == "" || flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: lmtp-send -socket PATH [-from A] [-to B] FILE")
		os.Exit(2)
	}
	if err := send(*socket, *from, *to, flag.Arg(0)); err != nil {
		fmt.Fprintln(os.Stderr, "lmtp-send:", err)
		os.Exit(1)
	}
}

func send(socket, from, to, file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	p := deliver.NewPool(deliver.PoolOptions{Network: "unix", Addr: socket, LMTP: true, LocalName: "lmtp-send"})
	defer p.Close()
	t0 := time.Now()
	tx, err := p.Begin(context.Background(), deliver.Envelope{From: from, Rcpts: []string{to}})
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if errs := tx.Rejected(); errs[0] != nil {
		tx.Abort()
		return fmt.Errorf("RCPT: %w", errs[0])
	}
	if _, err := io.Copy(tx, bufio.NewReaderSize(f, 64<<10)); err != nil {
		tx.Abort()
		return fmt.Errorf("data: %w", err)
	}
	if errs := tx.Commit(); errs[0] != nil {
		return fmt.Errorf("after data: %w", errs[0])
	}
	fmt.Printf("%.3f\n", time.Since(t0).Seconds())
	return nil
}
