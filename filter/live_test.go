package filter

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/smimefilter/smimefilter/deliver"
	"github.com/smimefilter/smimefilter/internal/smimetest"
)

// TestLiveCopyNeverWaitsForAConnection: with every outbound connection in
// use, a message still arrives at the speed its client sends it (the copy
// that would have streamed is made from the spool after the final dot), and
// is delivered once a connection comes free. A session that waited for a
// connection in the middle of DATA would stop reading its client, and
// Postfix would give up after lmtp_data_xfer_timeout.
func TestLiveCopyNeverWaitsForAConnection(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.org")
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{
		cfg:  Config{Certs: holder(t, certDir(t, alice)), SpoolDir: t.TempDir()},
		pool: deliver.PoolOptions{MaxConns: 1, WaitTimeout: time.Minute},
	})
	// Another session's copy holds the only connection.
	held, err := rf.pool.Begin(context.Background(), deliver.Envelope{From: "s@example.net", Rcpts: []string{"other@example.org"}})
	if err != nil {
		t.Fatal(err)
	}
	cl := lmtpClient(t, rf.path)
	if err := cl.Mail("s@example.net", nil); err != nil {
		t.Fatal(err)
	}
	if err := cl.Rcpt("alice@example.org", nil); err != nil {
		t.Fatal(err)
	}
	w, err := cl.Data()
	if err != nil {
		t.Fatal(err)
	}
	// Far more than the socket buffers between client and filter hold:
	// the write returns only if the filter reads while the pool is full.
	body := strings.Repeat("a line of the message that the filter must read on\r\n", 40_000)
	wrote := make(chan error, 1)
	go func() {
		_, err := w.Write(msg("held", body))
		wrote <- err
	}()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		held.Abort()
		t.Fatal("the filter stopped reading the message while every connection was in use")
	}
	held.Write([]byte("Subject: other\r\n\r\nx\r\n"))
	if res := held.Commit(); res[0] != nil {
		t.Fatal(res)
	}
	resp, err := w.CloseWithLMTPResponse()
	if err != nil || len(resp) != 1 {
		t.Fatalf("end of data: %v, %v; want 250 once the connection came free", resp, err)
	}
	got, err := smimetest.DecryptMessage(t, copyFor(t, f, "alice@example.org"), alice)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(got, []byte(body)) {
		t.Errorf("decrypted copy does not end in the body sent (%d bytes)", len(got))
	}
}
