package certs

import (
	"cmp"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
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
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

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
	// it has no rfc822Name.
	Addresses []string

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
}

// Load reads every certificate file of opts.Dir. It fails only when the
// directory itself cannot be read; a bad file or certificate becomes a
// Skipped entry and loading goes on.
func Load(opts Options) (*Store, error) {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	// One instant for the whole load, so that every certificate is judged
	// against the same clock.
	t := now()

	// os.ReadDir sorts by name: the load order, and so the order of
	// Skipped and of duplicates, is deterministic.
	entries, err := os.ReadDir(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("certs: reading directory: %w", err)
	}

	s := &Store{
		now:    now,
		exact:  make(map[string][]*Cert),
		folded: make(map[string][]*Cert),
	}
	var cands []candidate
	seen := make(map[string]string) // fingerprint → file
	var keyCands []keyCandidate
	seenKeys := make(map[string]string)
	for _, e := range entries {
		if ignored(e.Name()) {
			continue
		}
		path := filepath.Join(opts.Dir, e.Name())
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
		if isOpenPGP(data) {
			keyCands = s.loadKeyFile(path, data, keyCands, seenKeys)
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
		for _, c := range parsed {
			fp := fingerprint(c.Raw)
			if first, dup := seen[fp]; dup {
				// Encrypting twice to one key only makes the message
				// bigger; keep the first, say where it is.
				s.skipped = append(s.skipped, Skipped{File: path, Subject: c.Subject.String(),
					Err: fmt.Errorf("%w: same as in %s (sha256 %s)", ErrDuplicate, first, fp)})
				continue
			}
			seen[fp] = path
			cands = append(cands, candidate{cert: c, file: path, fp: fp})
		}
	}

	var inter *x509.CertPool
	if opts.Roots != nil {
		// Every certificate of the directory may serve as an
		// intermediate, whatever its fitness as a recipient.
		inter = x509.NewCertPool()
		for _, c := range cands {
			inter.AddCert(c.cert)
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
		s.certs = append(s.certs, &Cert{
			Certificate: c.cert,
			Fingerprint: c.fp,
			File:        c.file,
			Addresses:   r.addresses,
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
			s.exact[a] = append(s.exact[a], c)
			k := foldKey(a)
			// A certificate listing "Ann@" and "ann@" goes into the
			// folded bucket once.
			if !slices.Contains(s.folded[k], c) {
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
