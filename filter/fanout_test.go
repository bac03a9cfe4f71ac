package filter

import (
	"fmt"
	"strings"
	"testing"

	"github.com/smimefilter/smimefilter/deliver"
	"github.com/smimefilter/smimefilter/internal/smimetest"
	"github.com/smimefilter/smimefilter/server"
)

// TestHundredsOfCertificateSetsOneTransaction: 400 recipients, each with a
// certificate of their own, in one LMTP transaction (the server's
// recipient limit raised to fit), over a pool of two connections: every
// recipient gets 250 in that transaction, each copy names its own
// recipient's certificate only, and the pool never opens more than its
// two connections. (The certificates share one key: what makes a
// separate copy is a separate certificate, and 400 RSA keys would take
// minutes under -race.)
func TestHundredsOfCertificateSetsOneTransaction(t *testing.T) {
	const n = 400
	var rs []*smimetest.Recipient
	var addrs []string
	for i := range n {
		r := smimetest.NewRecipient(t, fmt.Sprintf("r%03d@example.org", i), smimetest.KeyName("fan-out"))
		rs = append(rs, r)
		addrs = append(addrs, r.Addr)
	}
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{
		cfg:    Config{Certs: holder(t, certDir(t, rs...)), SpoolMemory: 4096, SpoolDir: t.TempDir()},
		pool:   deliver.PoolOptions{MaxConns: 2, MaxTransactions: 1000}, // no renewal after 100 copies
		server: server.Options{MaxRecipients: n},
	})
	body := strings.Repeat("four hundred copies, one encryption\r\n", 200)
	got := send(t, lmtpClient(t, rf.path), "s@example.net", addrs, msg("many", body))
	for _, a := range addrs {
		if got[a].code != 250 {
			t.Fatalf("%s: got %v, want 250 in the first transaction", a, got[a])
		}
	}
	if d := f.dials.Load(); d > 2 {
		t.Errorf("the pool dialled %d connections, want at most 2", d)
	}
	for _, r := range rs {
		der, err := smimetest.ExtractDER(copyFor(t, f, r.Addr))
		if err != nil {
			t.Fatal(err)
		}
		ris, err := smimetest.RecipientsOf(der)
		if err != nil {
			t.Fatal(err)
		}
		if len(ris) != 1 || !ris[0].Is(r.Cert) {
			t.Fatalf("%s: copy names %v, want its own certificate only", r.Addr, ris)
		}
	}
}
