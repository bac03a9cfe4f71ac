package enroll

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// The state directory (enroll.dir):
//
//	active/<address>_<fingerprint>.pem  enrolled certificates, one file per address and certificate
//	pending/<request>.json              requests waiting for their code or their delay
//	notices.json                        the expiry warnings already sent
//	log.jsonl                           the change log, append-only
//	lock                                serializes the daemon and the command line
//
// Every file is replaced whole: written under a hidden temporary name
// (which the certificate store ignores), fsynced, renamed into place, and
// the directory fsynced, so that a crash leaves either the old or the new
// file. The log is only ever appended to.
const (
	activeDir   = "active"
	pendingDir  = "pending"
	noticesFile = "notices.json"
	logFile     = "log.jsonl"
	lockFile    = "lock"
)

// Pending request states.
const (
	stateChallenged = "challenged" // waiting for a confirmation code
	stateConfirmed  = "confirmed"  // confirmed, active from ActivateAt
)

// pendingRecord is one file of pending/.
type pendingRecord struct {
	ID          string       `json:"id"`
	Kind        string       `json:"kind"`
	Address     string       `json:"address"`
	Fingerprint string       `json:"fingerprint"`
	Credential  string       `json:"credential"` // Kind.Encode: public material only
	Requester   string       `json:"requester"`
	Created     time.Time    `json:"created"`
	State       string       `json:"state"`
	Codes       []codeRecord `json:"codes,omitempty"`   // confirmation codes, hashed
	Cancels     []codeRecord `json:"cancels,omitempty"` // cancel codes, hashed
	ActivateAt  time.Time    `json:"activate_at,omitzero"`
	ConfirmedBy string       `json:"confirmed_by,omitempty"`

	cred *Credential
}

// activeRecord is one file of active/.
type activeRecord struct {
	Address     string
	Kind        string
	Fingerprint string
	EnrolledAt  time.Time
	RequestedBy string
	Request     string
	cred        *Credential
}

// noticeRecord remembers which expiry warnings went out for one address's
// last certificate.
type noticeRecord struct {
	Address     string    `json:"address"`
	Fingerprint string    `json:"fingerprint"`
	NotAfter    time.Time `json:"not_after"`
	Sent        []string  `json:"sent"` // thresholds, as time.Duration.String
}

// state is the directory as read under the lock.
type state struct {
	pending []*pendingRecord // by ID
	active  []*activeRecord  // by address, fingerprint
	notices []noticeRecord
}

// pendingID names a request: one per kind, address and key, so that asking
// again for the same key adds a code to the same request instead of
// filling the disk.
func pendingID(kind, addr, fp string) string {
	sum := sha256.Sum256([]byte(kind + "\x00" + addr + "\x00" + fp))
	return hex.EncodeToString(sum[:16])
}

// activeName is the file name of an enrolled certificate: readable for an
// administrator, unique per address and fingerprint. The address inside the
// file is authoritative; the name is escaped so that any mailbox makes a
// safe file name.
func activeName(addr, fp string) string {
	var b strings.Builder
	for i := 0; i < len(addr); i++ {
		c := addr[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '@' || c == '+' || c == '-' || c == '_' || (c == '.' && i > 0):
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	name := b.String()
	if len(name) > 150 {
		sum := sha256.Sum256([]byte(addr))
		name = name[:130] + "~" + hex.EncodeToString(sum[:8])
	}
	return name + "_" + fp + ".pem"
}

func (st *state) pendingByID(id string) *pendingRecord {
	for _, p := range st.pending {
		if p.ID == id {
			return p
		}
	}
	return nil
}

func (st *state) pendingFor(addr string) int {
	n := 0
	for _, p := range st.pending {
		if p.Address == addr {
			n++
		}
	}
	return n
}

func (st *state) activeFor(addr, fp string) *activeRecord {
	for _, a := range st.active {
		if a.Address == addr && a.Fingerprint == fp {
			return a
		}
	}
	return nil
}

// load reads the directory. A file that cannot be read is an error rather
// than skipped: every file is written atomically, so an unreadable one
// means damage an administrator must see, and acting on a partial view
// could activate what should wait.
func (e *Engine) load() (*state, error) {
	st := &state{}
	pend, err := readDir(filepath.Join(e.opts.Dir, pendingDir))
	if err != nil {
		return nil, err
	}
	for _, name := range pend {
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(e.opts.Dir, pendingDir, name))
		if err != nil {
			return nil, fmt.Errorf("enroll: %w", err)
		}
		var p pendingRecord
		if err := json.Unmarshal(data, &p); err != nil {
			return nil, fmt.Errorf("enroll: %s: %w", filepath.Join(pendingDir, name), err)
		}
		k, ok := e.kinds[p.Kind]
		if !ok {
			return nil, fmt.Errorf("enroll: %s: unknown kind %q", filepath.Join(pendingDir, name), p.Kind)
		}
		if p.cred, err = k.Decode([]byte(p.Credential)); err != nil {
			return nil, fmt.Errorf("enroll: %s: %w", filepath.Join(pendingDir, name), err)
		}
		st.pending = append(st.pending, &p)
	}
	slices.SortFunc(st.pending, func(a, b *pendingRecord) int { return strings.Compare(a.ID, b.ID) })

	act, err := readDir(filepath.Join(e.opts.Dir, activeDir))
	if err != nil {
		return nil, err
	}
	for _, name := range act {
		path := filepath.Join(e.opts.Dir, activeDir, name)
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("enroll: %w", err)
		}
		a, err := e.parseActive(data)
		if err != nil {
			return nil, fmt.Errorf("enroll: %s: %w", filepath.Join(activeDir, name), err)
		}
		st.active = append(st.active, a)
	}
	slices.SortFunc(st.active, func(a, b *activeRecord) int {
		return cmpOr(strings.Compare(a.Address, b.Address), strings.Compare(a.Fingerprint, b.Fingerprint))
	})

	data, err := os.ReadFile(filepath.Join(e.opts.Dir, noticesFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("enroll: %w", err)
	default:
		if err := json.Unmarshal(data, &st.notices); err != nil {
			return nil, fmt.Errorf("enroll: %s: %w", noticesFile, err)
		}
	}
	return st, nil
}

func cmpOr(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}

// readDir lists the visible files of dir; a missing directory is empty (a
// read-only Open of a directory the daemon never created).
func readDir(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	var names []string
	for _, de := range ents {
		if strings.HasPrefix(de.Name(), ".") || !de.Type().IsRegular() {
			continue
		}
		names = append(names, de.Name())
	}
	return names, nil
}

// The preamble of an active file: "Key: value" lines before the first PEM
// block. OpenSSL and the certificate store read past text before BEGIN; PEM
// headers inside the block would make OpenSSL refuse the file.
const (
	hdrAddress     = "Enrolled-Address"
	hdrKind        = "Enrolled-Kind"
	hdrFingerprint = "Enrolled-Fingerprint"
	hdrAt          = "Enrolled-At"
	hdrRequestedBy = "Requested-By"
	hdrRequest     = "Request"
)

func (e *Engine) encodeActive(a *activeRecord) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s: %s\n", hdrAddress, a.Address)
	fmt.Fprintf(&b, "%s: %s\n", hdrKind, a.Kind)
	fmt.Fprintf(&b, "%s: %s\n", hdrFingerprint, a.Fingerprint)
	fmt.Fprintf(&b, "%s: %s\n", hdrAt, a.EnrolledAt.UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "%s: %s\n", hdrRequestedBy, a.RequestedBy)
	fmt.Fprintf(&b, "%s: %s\n", hdrRequest, a.Request)
	b.Write(e.kinds[a.Kind].Encode(a.cred))
	return b.Bytes()
}

func (e *Engine) parseActive(data []byte) (*activeRecord, error) {
	a := &activeRecord{}
	rest := data
	for len(rest) > 0 && !bytes.HasPrefix(rest, []byte("-----BEGIN")) {
		line := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line, rest = rest[:i], rest[i+1:]
		} else {
			rest = nil
		}
		k, v, ok := strings.Cut(strings.TrimSpace(string(line)), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case hdrAddress:
			a.Address = v
		case hdrKind:
			a.Kind = v
		case hdrFingerprint:
			a.Fingerprint = v
		case hdrAt:
			a.EnrolledAt, _ = time.Parse(time.RFC3339, v)
		case hdrRequestedBy:
			a.RequestedBy = v
		case hdrRequest:
			a.Request = v
		}
	}
	if a.Address == "" {
		return nil, fmt.Errorf("no %s line", hdrAddress)
	}
	k, ok := e.kinds[a.Kind]
	if !ok {
		return nil, fmt.Errorf("unknown kind %q", a.Kind)
	}
	cred, err := k.Decode(rest)
	if err != nil {
		return nil, err
	}
	if a.Fingerprint != cred.Fingerprint {
		return nil, fmt.Errorf("%s %s does not match the certificate (%s)", hdrFingerprint, a.Fingerprint, cred.Fingerprint)
	}
	a.cred = cred
	return a, nil
}

func (e *Engine) savePending(p *pendingRecord) error {
	data, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	return e.writeAtomic(filepath.Join(e.opts.Dir, pendingDir), p.ID+".json", append(data, '\n'))
}

func (e *Engine) removePending(st *state, p *pendingRecord) error {
	if err := e.remove(filepath.Join(e.opts.Dir, pendingDir), p.ID+".json"); err != nil {
		return err
	}
	st.pending = slices.DeleteFunc(st.pending, func(q *pendingRecord) bool { return q == p })
	return nil
}

func (e *Engine) writeActive(st *state, a *activeRecord) error {
	if err := e.writeAtomic(filepath.Join(e.opts.Dir, activeDir), activeName(a.Address, a.Fingerprint), e.encodeActive(a)); err != nil {
		return err
	}
	if st.activeFor(a.Address, a.Fingerprint) == nil {
		st.active = append(st.active, a)
	}
	return nil
}

func (e *Engine) removeActive(st *state, a *activeRecord) error {
	if err := e.remove(filepath.Join(e.opts.Dir, activeDir), activeName(a.Address, a.Fingerprint)); err != nil {
		return err
	}
	st.active = slices.DeleteFunc(st.active, func(b *activeRecord) bool { return b == a })
	return nil
}

func (e *Engine) saveNotices(st *state) error {
	data, err := json.MarshalIndent(st.notices, "", "  ")
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	return e.writeAtomic(e.opts.Dir, noticesFile, append(data, '\n'))
}

// writeAtomic replaces dir/name with data so that a crash at any moment
// leaves the old file or the new one, never a mix, and the rename itself
// survives a power loss.
func (e *Engine) writeAtomic(dir, name string, data []byte) (err error) {
	f, err := os.CreateTemp(dir, "."+name+".*.tmp")
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := matchOwner(f, e.opts.Dir); err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	return syncDir(dir)
}

func (e *Engine) remove(dir, name string) error {
	if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("enroll: %w", err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("enroll: fsync %s: %w", dir, err)
	}
	return nil
}

// removeTemp deletes the temporary files a crash left behind.
func removeTemp(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	for _, de := range ents {
		if n := de.Name(); strings.HasPrefix(n, ".") && strings.HasSuffix(n, ".tmp") {
			if err := os.Remove(filepath.Join(dir, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("enroll: %w", err)
			}
		}
	}
	return nil
}

// Bounds of one log line: a flood of requests with huge envelope senders
// or certificate reasons must not turn into a huge log.
const (
	maxLogField   = 320
	maxLogOutcome = 512
	maxLogLine    = 4096
)

// clean makes untrusted text safe for one log line and a message body: no
// control characters, valid UTF-8, at most max bytes.
func clean(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return -1
		}
		return r
	}, s)
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "..."
	}
	return s
}

// appendLog adds one line to the change log and fsyncs it before the
// action it records is taken as done. A line torn by a crash (no final
// newline) is cut off first, so that it cannot merge with the next.
func (e *Engine) appendLog(le LogEntry) error {
	le.Time = le.Time.UTC()
	le.Address = clean(le.Address, maxLogField)
	le.Requester = clean(le.Requester, maxLogField)
	le.Outcome = clean(le.Outcome, maxLogOutcome)
	line, err := json.Marshal(le)
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	if len(line) >= maxLogLine {
		return fmt.Errorf("enroll: log line of %d bytes", len(line))
	}
	line = append(line, '\n')
	path := filepath.Join(e.opts.Dir, logFile)
	created := false
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		created = true
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	defer f.Close()
	if created {
		if err := matchOwner(f, e.opts.Dir); err != nil {
			return fmt.Errorf("enroll: %w", err)
		}
	}
	if err := repairTail(f); err != nil {
		return err
	}
	if _, err := f.Write(line); err != nil {
		return fmt.Errorf("enroll: writing the log: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("enroll: fsync of the log: %w", err)
	}
	if created {
		return syncDir(e.opts.Dir)
	}
	return nil
}

// repairTail truncates f after its last newline when it does not end with
// one.
func repairTail(f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	size := fi.Size()
	if size == 0 {
		return nil
	}
	n := min(size, 2*maxLogLine)
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, size-n); err != nil {
		return fmt.Errorf("enroll: reading the log's end: %w", err)
	}
	if buf[n-1] == '\n' {
		return nil
	}
	keep := size - n + int64(bytes.LastIndexByte(buf, '\n')+1)
	if bytes.LastIndexByte(buf, '\n') < 0 && size > n {
		return fmt.Errorf("enroll: the log ends in %d bytes without a line end", n)
	}
	if err := f.Truncate(keep); err != nil {
		return fmt.Errorf("enroll: cutting a torn log line: %w", err)
	}
	return nil
}

// readLog reads the change log, oldest first. A last line without its
// newline is a write a crash cut short: the action it began was not taken
// as done, so it is not reported.
func readLog(path string) ([]LogEntry, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	defer f.Close()
	var out []LogEntry
	r := bufio.NewReader(f)
	for n := 1; ; n++ {
		line, err := r.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("enroll: reading the log: %w", err)
		}
		var le LogEntry
		if err := json.Unmarshal(line, &le); err != nil {
			return out, fmt.Errorf("enroll: %s line %d: %w", logFile, n, err)
		}
		out = append(out, le)
	}
}
