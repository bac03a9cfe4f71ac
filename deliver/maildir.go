package deliver

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ErrBadMailbox is wrapped when a recipient address cannot name a Maildir
// (it would escape the template's directory): no retry can fix that.
var ErrBadMailbox = errors.New("address cannot be mapped to a Maildir")

// Maildir delivers into Maildirs named by a template (see ExpandTemplate).
// It follows the Maildir rules (cr.yp.to/proto/maildir.html): the file is
// written in tmp/, fsynced, renamed into new/, and new/ itself is fsynced, so
// that a 250 means the message survives a crash. Directories it creates for
// a new mailbox are fsynced with the directories they were created in before
// the first message; a mailbox it has seen complete costs no extra call.
type Maildir struct {
	Template string
	// Mode for the directories it creates. Default 0700.
	DirMode os.FileMode

	host string
	seq  atomic.Uint64

	// Creating a mailbox is serialised, and a mailbox is known complete
	// only once its new directories are fsynced: a delivery that found a
	// directory another delivery had just made, not yet durable, could
	// otherwise report 250 for a file a crash would take with it.
	mkdirMu sync.Mutex
	known   sync.Map // Maildir path → struct{}: complete and durable
	nknown  atomic.Int64
	// syncDir, when set, replaces the package's syncDir: tests count the
	// calls.
	syncDir func(path string) error
}

// maxKnown bounds the cache of known mailboxes; past it, it starts afresh
// (a forgotten mailbox costs three stat calls on its next delivery).
const maxKnown = 1 << 16

// NewMaildir returns a Maildir target for template.
func NewMaildir(template string) (*Maildir, error) {
	if err := CheckTemplate(template); err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	// "/" and ":" have meanings in Maildir names; replace them as the
	// Maildir specification suggests.
	host = strings.NewReplacer("/", `\057`, ":", `\072`).Replace(host)
	if host == "" {
		host = "localhost"
	}
	return &Maildir{Template: template, DirMode: 0o700, host: host}, nil
}

// CheckTemplate validates a Maildir path template.
func CheckTemplate(tmpl string) error {
	if !filepath.IsAbs(tmpl) {
		return fmt.Errorf("maildir template %q is not an absolute path", tmpl)
	}
	for i := 0; i < len(tmpl); i++ {
		if tmpl[i] != '%' {
			continue
		}
		if i+1 >= len(tmpl) || !strings.ContainsRune("dnu%", rune(tmpl[i+1])) {
			return fmt.Errorf("maildir template %q: unknown placeholder at offset %d (use %%d, %%n, %%u or %%%%)", tmpl, i)
		}
		i++
	}
	return nil
}

// ExpandTemplate fills in the template for addr:
//
//	%d  the domain, lowercased
//	%n  the local part, lowercased
//	%u  the whole address, lowercased
//	%%  a literal %
//
// Lowercasing follows Dovecot's default (auth_username_format = %Lu), so a
// Maildir layout carries over when Dovecot is added later.
func ExpandTemplate(tmpl, addr string) (string, error) {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return "", fmt.Errorf("%w: %q has no local part or domain", ErrBadMailbox, addr)
	}
	local, domain := strings.ToLower(addr[:at]), strings.ToLower(addr[at+1:])
	for _, part := range []string{local, domain} {
		// A component that is empty, "." or "..", or contains a slash or a
		// NUL, would point outside the intended directory.
		if part == "." || part == ".." || strings.ContainsAny(part, "/\x00") || strings.HasPrefix(part, ".") {
			return "", fmt.Errorf("%w: %q", ErrBadMailbox, addr)
		}
	}
	var b strings.Builder
	for i := 0; i < len(tmpl); i++ {
		if tmpl[i] != '%' || i+1 >= len(tmpl) {
			b.WriteByte(tmpl[i])
			continue
		}
		i++
		switch tmpl[i] {
		case 'd':
			b.WriteString(domain)
		case 'n':
			b.WriteString(local)
		case 'u':
			b.WriteString(local + "@" + domain)
		default:
			b.WriteByte(tmpl[i])
		}
	}
	return filepath.Clean(b.String()), nil
}

// Close does nothing: a Maildir holds no resources between transactions.
func (m *Maildir) Close() error { return nil }

// Begin opens one file in tmp/ per recipient.
func (m *Maildir) Begin(ctx context.Context, env Envelope) (Tx, error) {
	tx := &maildirTx{m: m, files: make([]*maildirFile, len(env.Rcpts)), rejected: make([]error, len(env.Rcpts))}
	for i, rcpt := range env.Rcpts {
		f, err := m.create(rcpt)
		if err != nil {
			tx.rejected[i] = err
			continue
		}
		tx.files[i] = f
	}
	return tx, nil
}

type maildirFile struct {
	m    *Maildir
	dir  string // the Maildir
	name string // unique name, the same in tmp/ and new/
	f    *os.File
	n    int64
	err  error
	cr   bool // the last chunk ended in CR, held back
	buf  []byte
}

// write stores b with CRLF line ends turned into LF: Maildir files hold
// lines in the local convention, which Dovecot and every Maildir reader
// expect (Dovecot writes LF itself). A CR at the end of a chunk is held
// back until the next byte shows whether it ends a line.
func (f *maildirFile) write(b []byte) error {
	out := f.buf[:0]
	if f.cr {
		f.cr = false
		if len(b) == 0 || b[0] != '\n' {
			out = append(out, '\r')
		}
	}
	for {
		i := bytes.Index(b, crlf)
		if i < 0 {
			break
		}
		out = append(out, b[:i]...)
		out = append(out, '\n')
		b = b[i+2:]
	}
	if n := len(b); n > 0 && b[n-1] == '\r' {
		f.cr = true
		b = b[:n-1]
	}
	out = append(out, b...)
	f.buf = out
	n, err := f.f.Write(out)
	f.n += int64(n)
	return err
}

var crlf = []byte("\r\n")

func (m *Maildir) create(rcpt string) (*maildirFile, error) {
	dir, err := ExpandTemplate(m.Template, rcpt)
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		if err := m.ensure(dir); err != nil {
			return nil, err
		}
		name := m.uniqueName()
		f, err := os.OpenFile(filepath.Join(dir, "tmp", name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrNotExist) && attempt == 0 {
			// Removed since it was made (by an administrator, say).
			m.forget(dir)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("creating message file in %s: %w", dir, err)
		}
		return &maildirFile{m: m, dir: dir, name: name, f: f}, nil
	}
}

// ensure makes dir a complete Maildir whose directories survive a crash.
// A known mailbox costs nothing; otherwise each directory created, and the
// one it was created in, is fsynced before any message in it can be
// reported delivered.
func (m *Maildir) ensure(dir string) error {
	if _, ok := m.known.Load(dir); ok {
		return nil
	}
	m.mkdirMu.Lock()
	defer m.mkdirMu.Unlock()
	if _, ok := m.known.Load(dir); ok {
		return nil
	}
	var created []string
	for _, sub := range []string{"cur", "new", "tmp"} {
		c, err := mkdirAll(filepath.Join(dir, sub), m.DirMode)
		created = append(created, c...)
		if err != nil {
			return fmt.Errorf("creating Maildir %s: %w", dir, err)
		}
	}
	synced := map[string]bool{}
	for _, d := range created {
		for _, s := range []string{filepath.Dir(d), d} {
			if synced[s] {
				continue
			}
			synced[s] = true
			if err := m.fsyncDir(s); err != nil {
				return fmt.Errorf("creating Maildir %s: %w", dir, err)
			}
		}
	}
	if m.nknown.Add(1) > maxKnown {
		m.known.Clear()
		m.nknown.Store(1)
	}
	m.known.Store(dir, struct{}{})
	return nil
}

// forget drops dir from the known mailboxes, so the next delivery checks
// and recreates it.
func (m *Maildir) forget(dir string) {
	m.known.Delete(dir)
}

// mkdirAll is os.MkdirAll that returns the directories it created, parents
// first. One that appears meanwhile was made by another process, which
// answers for it.
func mkdirAll(path string, mode os.FileMode) ([]string, error) {
	var missing []string
	for p := path; ; {
		fi, err := os.Stat(p)
		if err == nil {
			if !fi.IsDir() {
				return nil, fmt.Errorf("%s: %w", p, syscall.ENOTDIR)
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		missing = append(missing, p)
		parent := filepath.Dir(p)
		if parent == p {
			break
		}
		p = parent
	}
	var created []string
	for i := len(missing) - 1; i >= 0; i-- {
		err := os.Mkdir(missing[i], mode)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return created, err
		}
		created = append(created, missing[i])
	}
	return created, nil
}

func (m *Maildir) fsyncDir(path string) error {
	if m.syncDir != nil {
		return m.syncDir(path)
	}
	return syncDir(path)
}

// syncDir makes a directory's entries durable.
func syncDir(path string) error {
	d, err := os.Open(path)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return nil
}

// uniqueName follows the modern Maildir convention: seconds, then
// microseconds, pid, a per-process counter and random bits, then the host.
func (m *Maildir) uniqueName() string {
	now := time.Now()
	var rnd [4]byte
	rand.Read(rnd[:])
	return strconv.FormatInt(now.Unix(), 10) + ".M" + strconv.Itoa(now.Nanosecond()/1000) +
		"P" + strconv.Itoa(os.Getpid()) + "Q" + strconv.FormatUint(m.seq.Add(1), 10) +
		"R" + hex.EncodeToString(rnd[:]) + "." + m.host
}

type maildirTx struct {
	m        *Maildir
	files    []*maildirFile
	rejected []error
	done     bool
}

func (tx *maildirTx) Rejected() []error { return tx.rejected }

func (tx *maildirTx) Write(b []byte) (int, error) {
	alive := 0
	for _, f := range tx.files {
		if f == nil || f.err != nil {
			continue
		}
		if err := f.write(b); err != nil {
			f.err = fmt.Errorf("writing %s: %w", f.f.Name(), err)
			continue
		}
		alive++
	}
	if alive == 0 {
		for _, f := range tx.files {
			if f != nil {
				return 0, f.err
			}
		}
		return 0, io.ErrShortWrite
	}
	return len(b), nil
}

func (tx *maildirTx) Commit() []error {
	if tx.done {
		return allErr(len(tx.files), ErrAborted)
	}
	tx.done = true
	out := make([]error, len(tx.files))
	for i, f := range tx.files {
		if f == nil {
			out[i] = tx.rejected[i]
			continue
		}
		out[i] = f.commit()
	}
	return out
}

func (f *maildirFile) commit() error {
	tmp := filepath.Join(f.dir, "tmp", f.name)
	if f.err == nil && f.cr {
		// A lone CR at the very end is content.
		f.cr = false
		if _, err := f.f.Write([]byte{'\r'}); err != nil {
			f.err = fmt.Errorf("writing %s: %w", tmp, err)
		} else {
			f.n++
		}
	}
	if f.err != nil {
		f.f.Close()
		os.Remove(tmp)
		return f.err
	}
	if err := f.f.Sync(); err != nil {
		f.f.Close()
		os.Remove(tmp)
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err := f.f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	// S=<size> lets IMAP servers report sizes without a stat (Dovecot reads it).
	final := filepath.Join(f.dir, "new", f.name+",S="+strconv.FormatInt(f.n, 10))
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		if errors.Is(err, fs.ErrNotExist) {
			f.m.forget(f.dir) // new/ went away: the next delivery makes it again
		}
		return fmt.Errorf("moving %s into new/: %w", tmp, err)
	}
	// The rename is durable only once the directory entry is on disk.
	if err := f.m.fsyncDir(filepath.Join(f.dir, "new")); err != nil {
		// The file is in new/ but may not survive a crash: report a
		// temporary failure and leave it. A duplicate is better than a loss.
		return err
	}
	return nil
}

func (tx *maildirTx) Abort() {
	if tx.done {
		return
	}
	tx.done = true
	for _, f := range tx.files {
		if f != nil {
			f.f.Close()
			os.Remove(filepath.Join(f.dir, "tmp", f.name))
		}
	}
}
