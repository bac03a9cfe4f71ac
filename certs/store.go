package certs

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Options says where certificates come from and what makes one usable.
type Options struct {
	// Dir is the directory of certificate files: PEM or DER, any number of
	// certificates per file, any file name; OpenPGP public keys may lie
	// beside them (see Key). Hidden files and subdirectories are ignored.
	Dir string
	// Roots, when set, is the set of trust anchors: a usable certificate
	// must chain to one of them for emailProtection, with the other
	// certificates of Dir as intermediates. When nil, every certificate in
	// Dir is taken as vouched for by whoever put it there.
	Roots *x509.CertPool
	// EnrolledDir, when set, is the directory of certificates and
	// OpenPGP keys users enrolled themselves (package enroll's ActiveDir), loaded beside Dir
	// and watched the same way. Each file there holds "Key: value" lines
	// before its PEM: its "Enrolled-Address:" names the one address it was
	// confirmed for, and it is used for that address only, whatever else
	// its subjectAltName lists: enrolling for alice@ must not make the
	// certificate serve bob@, which it may also name. The certificates
	// after the first of a file only serve as its intermediates. A file
	// whose block is OpenPGP armor holds one enrolled key, bound the same
	// way (Key.Addresses is then that one address). A
	// missing EnrolledDir is empty (nothing was enrolled yet); Dir may
	// then be "" too.
	EnrolledDir string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Where a certificate came from (Cert.Source).
const (
	SourceDirectory  = "directory"  // Options.Dir, put there by an administrator
	SourceEnrollment = "enrollment" // Options.EnrolledDir, enrolled by its user
)

// Cert is a certificate that passed every check at load time.
type Cert struct {
	*x509.Certificate
	// Fingerprint is the SHA-256 of the DER, lowercase hex: what logs
	// print to name a certificate.
	Fingerprint string
	// File is the path of the file it came from.
	File string
	// Addresses are the mailboxes it is for, sorted, domains lowercased:
	// its subjectAltName rfc822Names, or the subject DN emailAddress when
	// it has no rfc822Name; for an enrolled certificate, only the address
	// it was enrolled for.
	Addresses []string
	// Source is SourceDirectory or SourceEnrollment.
	Source string

	// validFrom and validUntil narrow NotBefore..NotAfter to the chain's
	// common validity when Roots is set: an expired intermediate makes the
	// certificate unusable just as its own expiry does.
	validFrom, validUntil time.Time
}

// UsableAt reports whether t lies within the certificate's validity (and,
// with Options.Roots, its chain's). Every other check was done at load.
func (c *Cert) UsableAt(t time.Time) bool {
	return !t.Before(c.validFrom) && !t.After(c.validUntil)
}

// ValidUntil is when the certificate stops being usable: its NotAfter, or
// earlier when an intermediate of its chain expires first.
func (c *Cert) ValidUntil() time.Time { return c.validUntil }

// Skipped is a file, PEM block or certificate that was not loaded, or a
// loaded certificate that is not usable yet.
type Skipped struct {
	File string
	// Subject is the certificate's subject DN, or an OpenPGP key's
	// primary User ID; empty when the entry is not a parsed certificate
	// or key (an unreadable file, a private key block).
	Subject string
	// Err says why. It wraps one or more of the package's sentinel errors.
	Err error
	// kept: the certificate is in the store all the same (not valid yet,
	// used from its NotBefore on).
	kept bool
}

func (s Skipped) String() string {
	if s.Subject == "" {
		return fmt.Sprintf("%s: %v", s.File, s.Err)
	}
	return fmt.Sprintf("%s: %s: %v", s.File, s.Subject, s.Err)
}

// Store is an immutable snapshot of the certificate directory, safe for
// concurrent use. Callers must not modify the Certs it returns.
type Store struct {
	now     func() time.Time
	certs   []*Cert // sorted by first address, NotAfter, fingerprint
	skipped []Skipped
	// exact is keyed by the normalized address (local part as written,
	// domain lowercased); folded by the address lowercased entirely.
	// Buckets are sorted by NotAfter, then fingerprint.
	exact  map[string][]*Cert
	folded map[string][]*Cert

	// OpenPGP keys, sorted and indexed the same way (openpgp.go).
	keys      []*Key
	keyExact  map[string][]*Key
	keyFolded map[string][]*Key
}

// candidate is a parsed certificate with where it came from.
type candidate struct {
	cert *x509.Certificate
	file string
	fp   string
	// bound is the address an enrolled certificate is for; "" for the
	// certificates of Dir.
	bound string
}

// loading is the state of one Load across its directories.
type loading struct {
	s     *Store
	cands []candidate
	// Chains that came with enrolled certificates: intermediates only.
	chain    []*x509.Certificate
	seen     map[string]string // fingerprint (and bound address) → file
	keyCands []keyCandidate
	seenKeys map[string]string
}

// Load reads every certificate file of opts.Dir, then of opts.EnrolledDir.
// It fails only when a directory itself cannot be read (a missing
// EnrolledDir is empty); a bad file or certificate becomes a
// Skipped entry and loading goes on.
func Load(opts Options) (*Store, error) {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	// One instant for the whole load, so that every certificate is judged
	// against the same clock.
	t := now()

	s := &Store{
		now:    now,
		exact:  make(map[string][]*Cert),
		folded: make(map[string][]*Cert),
	}
	ld := &loading{s: s, seen: make(map[string]string), seenKeys: make(map[string]string)}
	if opts.Dir != "" || opts.EnrolledDir == "" {
		// Without an enrolled directory, Dir is required: "" is an error.
		if err := ld.dir(opts.Dir, false); err != nil {
			return nil, err
		}
	}
	if opts.EnrolledDir != "" {
		err := ld.dir(opts.EnrolledDir, true)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	cands, keyCands := ld.cands, ld.keyCands

	var inter *x509.CertPool
	if opts.Roots != nil {
		// Every certificate of the directory may serve as an
		// intermediate, whatever its fitness as a recipient.
		inter = x509.NewCertPool()
		for _, c := range cands {
			inter.AddCert(c.cert)
		}
		for _, c := range ld.chain {
			inter.AddCert(c)
		}
	}

	for _, c := range cands {
		r := check(c.cert, t, opts.Roots, inter)
		if r.err != nil {
			s.skipped = append(s.skipped, Skipped{File: c.file, Subject: c.cert.Subject.String(),
				Err: fmt.Errorf("sha256 %s: %w", c.fp, r.err), kept: r.keep})
		}
		if !r.keep {
			continue
		}
		addrs, source := r.addresses, SourceDirectory
		if c.bound != "" {
			source = SourceEnrollment
			if !slices.Contains(addrs, c.bound) {
				s.skipped = append(s.skipped, Skipped{File: c.file, Subject: c.cert.Subject.String(),
					Err: fmt.Errorf("sha256 %s: %w: enrolled for %s, which it does not name", c.fp, ErrEnrolled, c.bound)})
				continue
			}
			addrs = []string{c.bound}
		}
		s.certs = append(s.certs, &Cert{
			Certificate: c.cert,
			Fingerprint: c.fp,
			File:        c.file,
			Addresses:   addrs,
			Source:      source,
			validFrom:   r.validFrom,
			validUntil:  r.validUntil,
		})
	}

	s.addKeys(keyCands, t)

	// Certificate checks ran after all files were read; put their
	// entries back among their files' so the report follows the
	// directory.
	slices.SortStableFunc(s.skipped, func(a, b Skipped) int { return strings.Compare(a.File, b.File) })

	slices.SortFunc(s.certs, func(a, b *Cert) int {
		return cmp.Or(
			strings.Compare(a.Addresses[0], b.Addresses[0]),
			a.NotAfter.Compare(b.NotAfter),
			strings.Compare(a.Fingerprint, b.Fingerprint),
		)
	})
	for _, c := range s.certs {
		for _, a := range c.Addresses {
			// One key once per bucket: a certificate both in Dir and
			// enrolled for one of its addresses, or listing "Ann@" and
			// "ann@", is encrypted to once.
			if !slices.ContainsFunc(s.exact[a], c.sameKey) {
				s.exact[a] = append(s.exact[a], c)
			}
			k := foldKey(a)
			if !slices.ContainsFunc(s.folded[k], c.sameKey) {
				s.folded[k] = append(s.folded[k], c)
			}
		}
	}
	for _, m := range []map[string][]*Cert{s.exact, s.folded} {
		for _, b := range m {
			slices.SortFunc(b, byExpiry)
		}
	}
	return s, nil
}

func (c *Cert) sameKey(o *Cert) bool { return c.Fingerprint == o.Fingerprint }

// dir reads the files of one directory into ld; enrolled says it is
// Options.EnrolledDir. It fails only when the directory cannot be read.
func (ld *loading) dir(dir string, enrolled bool) error {
	s := ld.s
	// os.ReadDir sorts by name: the load order, and so the order of
	// Skipped and of duplicates, is deterministic.
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("certs: reading directory: %w", err)
	}
	for _, e := range entries {
		if ignored(e.Name()) {
			continue
		}
		path := filepath.Join(dir, e.Name())
		data, isDir, err := readCertFile(path)
		if isDir {
			// Not followed: the directory is flat, and a subdirectory
			// (old/, a backup) must not be loaded by accident.
			continue
		}
		if err != nil {
			s.skipped = append(s.skipped, Skipped{File: path, Err: err})
			continue
		}
		bound := ""
		if enrolled {
			var err error
			if bound, err = enrolledAddress(data); err != nil {
				s.skipped = append(s.skipped, Skipped{File: path, Err: err})
				continue
			}
		}
		if isOpenPGP(data) {
			// An enrolled OpenPGP key is the same file with armor after
			// its "Key: value" lines (package enroll).
			ld.keyCands = s.loadKeyFile(path, data, ld.keyCands, ld.seenKeys, bound)
			// No key points into data: a secret key's bytes go too.
			clear(data)
			continue
		}
		parsed, skipped, isPEM := parseFile(path, data)
		if isPEM {
			// No certificate points into data; if it held a private
			// key, its text is gone now too.
			clear(data)
		}
		s.skipped = append(s.skipped, skipped...)
		if enrolled && len(parsed) > 1 {
			// The enrolled certificate comes first, its issuers after it.
			ld.chain = append(ld.chain, parsed[1:]...)
			parsed = parsed[:1]
		}
		for _, c := range parsed {
			fp := fingerprint(c.Raw)
			key := fp
			if bound != "" {
				// The same certificate may be enrolled for two of its
				// addresses, in two files: each binds one.
				key = fp + "\x00" + bound
			}
			if first, dup := ld.seen[key]; dup {
				// Encrypting twice to one key only makes the message
				// bigger; keep the first, say where it is.
				s.skipped = append(s.skipped, Skipped{File: path, Subject: c.Subject.String(),
					Err: fmt.Errorf("%w: same as in %s (sha256 %s)", ErrDuplicate, first, fp)})
				continue
			}
			ld.seen[key] = path
			ld.cands = append(ld.cands, candidate{cert: c, file: path, fp: fp, bound: bound})
		}
	}
	return nil
}

// enrolledAddress reads the "Enrolled-Address:" line of an enrolled
// certificate file, among the "Key: value" lines before its first PEM
// block, and returns it normalized.
func enrolledAddress(data []byte) (string, error) {
	head := data
	if i := bytes.Index(data, pemBegin); i >= 0 {
		head = data[:i]
	}
	for line := range strings.SplitSeq(string(head), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.EqualFold(k, "Enrolled-Address") {
			continue
		}
		a, ok := normalizeAddress(strings.TrimSpace(v))
		if !ok {
			return "", fmt.Errorf("%w: Enrolled-Address %q is not a mailbox", ErrEnrolled, strings.TrimSpace(v))
		}
		return a, nil
	}
	return "", fmt.Errorf("%w: no Enrolled-Address line", ErrEnrolled)
}

// fingerprint is the SHA-256 of a certificate's DER, lowercase hex.
func fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

func byExpiry(a, b *Cert) int {
	return cmp.Or(a.NotAfter.Compare(b.NotAfter), strings.Compare(a.Fingerprint, b.Fingerprint))
}

// ignored reports whether a directory entry is not a certificate file by
// convention: hidden files are editors' and tools' temporary files (an
// atomic writer's ".name.tmp" before the rename), and ".." entries of
// Kubernetes-style mounts.
func ignored(name string) bool {
	return strings.HasPrefix(name, ".")
}

// readCertFile reads one file of the directory, following a symbolic link
// to a file. isDir says the entry is a directory (or a link to one), which
// is to be passed over silently.
func readCertFile(path string) (data []byte, isDir bool, err error) {
	fi, err := os.Stat(path)
	if err != nil {
		// A dangling symbolic link, or a file removed since ReadDir.
		return nil, false, fmt.Errorf("%w: %w", ErrRead, err)
	}
	if fi.IsDir() {
		return nil, true, nil
	}
	if !fi.Mode().IsRegular() {
		// Reading a FIFO would block the load for ever; a device could
		// be endless.
		return nil, false, fmt.Errorf("%w: not a regular file (%s)", ErrRead, fi.Mode().Type())
	}
	f, err := openNoBlock(path)
	if err != nil {
		return nil, false, fmt.Errorf("%w: %w", ErrRead, err)
	}
	defer f.Close()
	// The entry may have been swapped for something else since Stat.
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, false, fmt.Errorf("%w: not a regular file", ErrRead)
	}
	data, err = io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, false, fmt.Errorf("%w: %w", ErrRead, err)
	}
	if len(data) > maxFileSize {
		return nil, false, fmt.Errorf("%w: larger than %d bytes", ErrRead, maxFileSize)
	}
	return data, false, nil
}

// Lookup returns every certificate usable now for addr, or nil. Several
// certificates mean a key rollover (or several devices): the message is
// to be encrypted to all of them. The local part is matched exactly
// first, case-insensitively only when no usable certificate matches
// exactly (see the package documentation). An address that is not a
// plausible mailbox yields nil.
func (s *Store) Lookup(addr string) []*Cert {
	return lookup(s.now(), s.exact, s.folded, addr)
}

// lookup is Lookup for certificates and LookupKeys for OpenPGP keys, so that
// both match an address alike.
func lookup[T interface{ UsableAt(time.Time) bool }](t time.Time, exact, folded map[string][]T, addr string) []T {
	a, ok := normalizeAddress(addr)
	if !ok {
		return nil
	}
	// Validity is checked again here, not only at load: the daemon runs
	// for months and certificates expire (or start) in between.
	if r := usableAt(exact[a], t); r != nil {
		return r
	}
	return usableAt(folded[foldKey(a)], t)
}

// usableAt returns a fresh slice of the entries usable at t, so that the
// caller cannot disturb the snapshot.
func usableAt[T interface{ UsableAt(time.Time) bool }](bucket []T, t time.Time) []T {
	var out []T
	for _, c := range bucket {
		if c.UsableAt(t) {
			out = append(out, c)
		}
	}
	return out
}

// Certs returns every loaded certificate, sorted by (first) address, then
// NotAfter. It includes certificates that are not valid yet (they are
// also listed in Skipped with ErrNotYetValid) or that expired since the
// load: Lookup filters by time, Certs does not.
func (s *Store) Certs() []*Cert { return slices.Clone(s.certs) }

// Skipped returns what was not loaded and why, in directory order:
// unreadable files, blocks that are not certificates, private keys, and
// certificates failing a check. Certificates not valid yet are listed
// here too although they are kept (see Certs): they are not usable at
// load time, and an administrator wants to know.
func (s *Store) Skipped() []Skipped { return slices.Clone(s.skipped) }

// ExpiringWithin returns the loaded certificates whose usability ends
// within d from now (ValidUntil ≤ now+d), including those that already
// expired since the load, soonest first. Meant for warnings ahead of
// expiry.
func (s *Store) ExpiringWithin(d time.Duration) []*Cert {
	limit := s.now().Add(d)
	var out []*Cert
	for _, c := range s.certs {
		if !c.validUntil.After(limit) {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b *Cert) int {
		return cmp.Or(a.validUntil.Compare(b.validUntil),
			strings.Compare(a.Addresses[0], b.Addresses[0]),
			strings.Compare(a.Fingerprint, b.Fingerprint))
	})
	return out
}
