package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/smimefilter/smimefilter/certs"
	"github.com/smimefilter/smimefilter/deliver"
	"github.com/smimefilter/smimefilter/enroll"
	"github.com/smimefilter/smimefilter/filter"
	"github.com/smimefilter/smimefilter/recipients"
)

// duration lets TOML say "30s".
type duration struct{ time.Duration }

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

func (d duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Config is the TOML file. Every key is documented in smimefilter.toml(5)
// and README.md.
type Config struct {
	Listen struct {
		Socket         string   `toml:"socket"`
		Address        string   `toml:"address"`
		Mode           string   `toml:"mode"`
		Group          string   `toml:"group"`
		Hostname       string   `toml:"hostname"`
		MaxConnections int      `toml:"max_connections"`
		ReadTimeout    duration `toml:"read_timeout"`
		WriteTimeout   duration `toml:"write_timeout"`
		ShutdownGrace  duration `toml:"shutdown_grace"`
	} `toml:"listen"`
	Limits struct {
		MaxMessageSize int64 `toml:"max_message_size"`
		MaxRecipients  int   `toml:"max_recipients"`
		MaxHeaderSize  int   `toml:"max_header_size"`
		MaxLineLength  int   `toml:"max_line_length"`
	} `toml:"limits"`
	Spool struct {
		// Dir is where encrypted message data beyond Memory goes, in a
		// private directory of the daemon's; "" is $CACHE_DIRECTORY,
		// else /var/tmp.
		Dir    string `toml:"dir"`
		Memory int64  `toml:"memory"`
	} `toml:"spool"`
	Deliver struct {
		LMTP            string   `toml:"lmtp"`
		Maildir         string   `toml:"maildir"`
		MaxConnections  int      `toml:"max_connections"`
		MaxIdle         int      `toml:"max_idle"`
		IdleTimeout     duration `toml:"idle_timeout"`
		MaxTransactions int      `toml:"max_transactions"`
		MaxLifetime     duration `toml:"max_lifetime"`
		DialTimeout     duration `toml:"dial_timeout"`
		CommandTimeout  duration `toml:"command_timeout"`
		DataTimeout     duration `toml:"data_timeout"`
		HostedDomains   []string `toml:"hosted_domains"`
		Reinject        string   `toml:"reinject"`
	} `toml:"deliver"`
	Certs struct {
		Dir        string `toml:"dir"`
		TrustRoots string `toml:"trust_roots"`
		Lookup     string `toml:"lookup"`
		// RecipientDelimiter: alice+x@ falls back to alice@'s certificates.
		RecipientDelimiter string `toml:"recipient_delimiter"`
	} `toml:"certs"`
	Policy struct {
		MissingCertificate string            `toml:"missing_certificate"`
		KeyTransport       string            `toml:"key_transport"`
		HeaderProtection   bool              `toml:"header_protection"`
		Prefer             string            `toml:"prefer"`
		HiddenRecipients   bool              `toml:"openpgp_hidden_recipients"`
		Domains            map[string]string `toml:"domains"`
		Addresses          map[string]string `toml:"addresses"`
	} `toml:"policy"`
	// Enroll is enrollment by signed mail (package enroll); off unless
	// Address is set.
	Enroll struct {
		Address     string   `toml:"address"`
		Dir         string   `toml:"dir"`
		ChangeDelay duration `toml:"change_delay"`
		// CodeLifetime: how long a confirmation or cancel code works.
		CodeLifetime   duration   `toml:"code_lifetime"`
		ExpiryWarnings []duration `toml:"expiry_warnings"`
		MaxMessageSize int64      `toml:"max_message_size"`
		// Abuse limits: pending requests, and messages a day.
		MaxPendingPerAddress  int `toml:"max_pending_per_address"`
		MaxPendingTotal       int `toml:"max_pending_total"`
		MaxRequestsPerSender  int `toml:"max_requests_per_sender"`
		MaxRequestsPerAddress int `toml:"max_requests_per_address"`
	} `toml:"enroll"`
	Rewrite []recipients.Rule `toml:"rewrite"`
	Log     struct {
		Level  string `toml:"level"`
		Format string `toml:"format"`
	} `toml:"log"`

	// Derived by validate.
	path     string
	notes    []string // accepted but worth telling the administrator
	rewriter *recipients.Rewriter
	mode     os.FileMode
	gid      int
	roots    *x509.CertPool
}

// Defaults: a filter that stays out of Postfix's way. Pool sizes follow
// Postfix's own default of a few LMTP connections per destination.
func defaultConfig() *Config {
	c := &Config{}
	c.Listen.Mode = "0660"
	c.Listen.MaxConnections = 64
	c.Listen.ReadTimeout.Duration = 10 * time.Minute
	c.Listen.WriteTimeout.Duration = 10 * time.Minute
	c.Listen.ShutdownGrace.Duration = 30 * time.Second
	c.Limits.MaxMessageSize = 100 << 20
	c.Limits.MaxRecipients = 1000
	c.Limits.MaxHeaderSize = 256 << 10
	c.Limits.MaxLineLength = 4096
	c.Deliver.MaxConnections = 16
	c.Deliver.MaxIdle = 4
	c.Deliver.IdleTimeout.Duration = 30 * time.Second
	c.Deliver.MaxTransactions = 100
	c.Deliver.MaxLifetime.Duration = 10 * time.Minute
	c.Deliver.DialTimeout.Duration = 10 * time.Second
	c.Deliver.CommandTimeout.Duration = 2 * time.Minute
	c.Deliver.DataTimeout.Duration = 10 * time.Minute
	c.Spool.Memory = 256 << 10
	c.Certs.Lookup = "original"
	c.Policy.MissingCertificate = string(filter.Tempfail)
	c.Policy.KeyTransport = "rsa-pkcs1v15"
	c.Policy.Prefer = "smime"
	c.Enroll.ChangeDelay.Duration = enroll.DefaultChangeDelay
	c.Enroll.CodeLifetime.Duration = enroll.DefaultCodeLifetime
	for _, w := range enroll.DefaultExpiryWarnings {
		c.Enroll.ExpiryWarnings = append(c.Enroll.ExpiryWarnings, duration{w})
	}
	c.Enroll.MaxMessageSize = enroll.DefaultMaxMessageSize
	c.Enroll.MaxPendingPerAddress = enroll.DefaultMaxPendingPerAddress
	c.Enroll.MaxPendingTotal = enroll.DefaultMaxPendingTotal
	c.Enroll.MaxRequestsPerSender = enroll.DefaultMaxRequestsPerSenderPerDay
	c.Enroll.MaxRequestsPerAddress = enroll.DefaultMaxRequestsPerAddressPerDay
	c.Log.Level = "info"
	c.Log.Format = "text"
	return c
}

// defaultStateDir is enroll.dir when the file does not set it: systemd's
// StateDirectory= (the first, if there are several), else the packaged
// path.
func defaultStateDir() string {
	if sd, _, _ := strings.Cut(os.Getenv("STATE_DIRECTORY"), ":"); sd != "" {
		return sd
	}
	return "/var/lib/smimefilter"
}

// configError collects every problem of a config file, so one run of
// `smimefilter check` shows them all.
type configError struct {
	path     string
	problems []string
}

func (e *configError) Error() string {
	var b strings.Builder
	for i, p := range e.problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.path + ":" + p)
	}
	return b.String()
}

func (e *configError) add(key, format string, args ...any) {
	e.problems = append(e.problems, key+": "+fmt.Sprintf(format, args...))
}

// loadConfig reads and validates path. A *configError lists every problem.
func loadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &configError{path: path, problems: []string{" " + err.Error()}}
	}
	return parseConfig(path, data)
}

func parseConfig(path string, data []byte) (*Config, error) {
	c := defaultConfig()
	c.path = path
	ce := &configError{path: path}
	md, err := toml.Decode(string(data), c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			ce.add(strconv.Itoa(pe.Position.Line), "%s", pe.Message)
		} else {
			ce.add("", "%v", err)
		}
		return nil, ce
	}
	for _, u := range unknownKeys(md) {
		if u.key == "limits.max_copies" {
			c.notes = append(c.notes, u.key+": "+maxCopiesNote)
			continue
		}
		ce.add(u.key, "%s", u.problem())
	}
	c.validate(ce)
	if len(ce.problems) > 0 {
		return nil, ce
	}
	return c, nil
}

func (c *Config) validate(ce *configError) {
	l := &c.Listen
	// With neither socket nor address the listener must come from systemd;
	// that is checked when the daemon starts, not here.
	if l.Socket != "" && l.Address != "" {
		ce.add("listen", "set socket or address, not both")
	}
	if l.Socket != "" && !filepath.IsAbs(l.Socket) {
		ce.add("listen.socket", "%q is not an absolute path", l.Socket)
	}
	if l.Address != "" {
		if _, _, err := net.SplitHostPort(l.Address); err != nil {
			ce.add("listen.address", "%v", err)
		}
	}
	if m, err := strconv.ParseUint(l.Mode, 8, 32); err != nil || m > 0o777 {
		ce.add("listen.mode", "%q is not an octal file mode", l.Mode)
	} else {
		c.mode = os.FileMode(m)
	}
	c.gid = -1
	if l.Group != "" {
		g, err := user.LookupGroup(l.Group)
		if err != nil {
			ce.add("listen.group", "%v", err)
		} else {
			c.gid, _ = strconv.Atoi(g.Gid)
		}
	}
	positive := func(key string, v int64) {
		if v <= 0 {
			ce.add(key, "must be greater than 0, got %d", v)
		}
	}
	positive("listen.max_connections", int64(l.MaxConnections))
	positive("listen.read_timeout", int64(l.ReadTimeout.Duration))
	positive("listen.write_timeout", int64(l.WriteTimeout.Duration))
	if l.ShutdownGrace.Duration < 0 {
		ce.add("listen.shutdown_grace", "must not be negative")
	}
	positive("limits.max_message_size", c.Limits.MaxMessageSize)
	positive("limits.max_recipients", int64(c.Limits.MaxRecipients))
	positive("limits.max_header_size", int64(c.Limits.MaxHeaderSize))
	if c.Limits.MaxLineLength < 1000 {
		// RFC 5321 §4.5.3.1.6: 1000 octets including CRLF must always pass.
		ce.add("limits.max_line_length", "must be at least 1000 (RFC 5321), got %d", c.Limits.MaxLineLength)
	}

	d := &c.Deliver
	switch {
	case d.LMTP == "" && d.Maildir == "":
		ce.add("deliver", "set lmtp (Dovecot's LMTP socket or host:port) or maildir")
	case d.LMTP != "" && d.Maildir != "":
		ce.add("deliver", "set lmtp or maildir, not both")
	case d.Maildir != "":
		if err := deliver.CheckTemplate(d.Maildir); err != nil {
			ce.add("deliver.maildir", "%v", err)
		}
	default:
		if !strings.HasPrefix(d.LMTP, "/") {
			if _, _, err := net.SplitHostPort(d.LMTP); err != nil {
				ce.add("deliver.lmtp", "%q is neither an absolute socket path nor host:port", d.LMTP)
			}
		}
	}
	positive("deliver.max_connections", int64(d.MaxConnections))
	if d.MaxIdle < 0 || d.MaxIdle > d.MaxConnections {
		ce.add("deliver.max_idle", "must be between 0 and max_connections (%d), got %d", d.MaxConnections, d.MaxIdle)
	}
	positive("deliver.idle_timeout", int64(d.IdleTimeout.Duration))
	positive("deliver.max_transactions", int64(d.MaxTransactions))
	positive("deliver.max_lifetime", int64(d.MaxLifetime.Duration))
	positive("deliver.dial_timeout", int64(d.DialTimeout.Duration))
	positive("deliver.command_timeout", int64(d.CommandTimeout.Duration))
	positive("deliver.data_timeout", int64(d.DataTimeout.Duration))
	if (d.Reinject == "") != (len(d.HostedDomains) == 0) {
		ce.add("deliver", "reinject and hosted_domains go together: recipients outside hosted_domains are handed to reinject")
	}
	if d.Reinject != "" {
		if _, _, err := net.SplitHostPort(d.Reinject); err != nil && !strings.HasPrefix(d.Reinject, "/") {
			ce.add("deliver.reinject", "%q is neither host:port nor an absolute socket path", d.Reinject)
		}
	}
	for i, dom := range d.HostedDomains {
		d.HostedDomains[i] = strings.ToLower(strings.TrimSpace(dom))
		if d.HostedDomains[i] == "" || strings.Contains(dom, "@") {
			ce.add("deliver.hosted_domains", "%q is not a domain", dom)
		}
	}

	if c.Spool.Dir != "" {
		if !filepath.IsAbs(c.Spool.Dir) {
			ce.add("spool.dir", "%q is not an absolute path", c.Spool.Dir)
		} else if st, err := os.Stat(c.Spool.Dir); err != nil {
			ce.add("spool.dir", "%v", err)
		} else if !st.IsDir() {
			ce.add("spool.dir", "%s is not a directory", c.Spool.Dir)
		}
	}
	if c.Spool.Memory < minSpoolMemory {
		ce.add("spool.memory", "must be at least %d, got %d", minSpoolMemory, c.Spool.Memory)
	}

	if c.Certs.Dir != "" {
		if st, err := os.Stat(c.Certs.Dir); err != nil {
			ce.add("certs.dir", "%v", err)
		} else if !st.IsDir() {
			ce.add("certs.dir", "%s is not a directory", c.Certs.Dir)
		}
	}
	if c.Certs.TrustRoots != "" {
		pem, err := os.ReadFile(c.Certs.TrustRoots)
		if err != nil {
			ce.add("certs.trust_roots", "%v", err)
		} else {
			c.roots = x509.NewCertPool()
			if !c.roots.AppendCertsFromPEM(pem) {
				ce.add("certs.trust_roots", "%s holds no PEM certificate", c.Certs.TrustRoots)
			}
		}
	}
	if c.Certs.Lookup != "original" && c.Certs.Lookup != "rewritten" {
		ce.add("certs.lookup", "%q: want \"original\" or \"rewritten\"", c.Certs.Lookup)
	}

	checkPolicy := func(key, v string) {
		switch filter.MissingPolicy(v) {
		case filter.Tempfail, filter.Reject, filter.Plaintext:
		default:
			ce.add(key, "%q: want \"tempfail\", \"reject\" or \"plaintext\"", v)
		}
	}
	checkPolicy("policy.missing_certificate", c.Policy.MissingCertificate)
	for _, dom := range sortedKeys(c.Policy.Domains) {
		checkPolicy("policy.domains."+dom, c.Policy.Domains[dom])
		if strings.Contains(dom, "@") {
			ce.add("policy.domains."+dom, "is an address; put it under [policy.addresses]")
		}
	}
	for _, a := range sortedKeys(c.Policy.Addresses) {
		checkPolicy("policy.addresses."+a, c.Policy.Addresses[a])
		if err := recipients.Validate(a); err != nil {
			ce.add("policy.addresses."+a, "%v", err)
		}
	}
	switch c.Policy.KeyTransport {
	case "rsa-pkcs1v15", "rsa-oaep":
	default:
		ce.add("policy.key_transport", "%q: want \"rsa-pkcs1v15\" or \"rsa-oaep\"", c.Policy.KeyTransport)
	}
	switch filter.Prefer(c.Policy.Prefer) {
	case filter.PreferSMIME, filter.PreferOpenPGP:
	default:
		ce.add("policy.prefer", "%q: want \"smime\" or \"openpgp\"", c.Policy.Prefer)
	}

	rw, err := recipients.Compile(c.Rewrite)
	if err != nil {
		for _, e := range unjoin(err) {
			ce.add("rewrite", "%v", e)
		}
	}
	c.rewriter = rw

	c.validateEnroll(ce, positive)

	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		ce.add("log.level", "%q: want debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		ce.add("log.format", "%q: want text or json", c.Log.Format)
	}
}

// validateEnroll checks [enroll]. The limits are checked even with
// enrollment off, so that a file is not found wrong only on the day the
// address is set.
func (c *Config) validateEnroll(ce *configError, positive func(string, int64)) {
	e := &c.Enroll
	if e.Address != "" {
		if err := recipients.Validate(e.Address); err != nil {
			ce.add("enroll.address", "%v", err)
		} else if _, ok := certs.NormalizeAddress(e.Address); !ok {
			ce.add("enroll.address", "%q is not a mailbox", e.Address)
		}
	}
	if e.Dir == "" {
		e.Dir = defaultStateDir()
	}
	if !filepath.IsAbs(e.Dir) {
		ce.add("enroll.dir", "%q is not an absolute path", e.Dir)
	}
	// 0 would be the engine's default (72h), not "at once": refused.
	positive("enroll.change_delay", int64(e.ChangeDelay.Duration))
	positive("enroll.code_lifetime", int64(e.CodeLifetime.Duration))
	for _, w := range e.ExpiryWarnings {
		if w.Duration <= 0 {
			ce.add("enroll.expiry_warnings", "must be greater than 0, got %v", w.Duration)
		}
	}
	positive("enroll.max_message_size", e.MaxMessageSize)
	positive("enroll.max_pending_per_address", int64(e.MaxPendingPerAddress))
	positive("enroll.max_pending_total", int64(e.MaxPendingTotal))
	positive("enroll.max_requests_per_sender", int64(e.MaxRequestsPerSender))
	positive("enroll.max_requests_per_address", int64(e.MaxRequestsPerAddress))
}

// enrollOptions is the engine's view of [enroll]; the daemon adds the
// hooks into the filter and the store.
func (c *Config) enrollOptions() enroll.Options {
	e := &c.Enroll
	o := enroll.Options{
		Dir:                         e.Dir,
		Address:                     e.Address,
		ChangeDelay:                 e.ChangeDelay.Duration,
		CodeLifetime:                e.CodeLifetime.Duration,
		ExpiryWarnings:              []time.Duration{}, // [] in the file: none
		Roots:                       c.roots,
		MaxMessageSize:              e.MaxMessageSize,
		MaxPendingPerAddress:        e.MaxPendingPerAddress,
		MaxPendingTotal:             e.MaxPendingTotal,
		MaxRequestsPerSenderPerDay:  e.MaxRequestsPerSender,
		MaxRequestsPerAddressPerDay: e.MaxRequestsPerAddress,
	}
	for _, w := range e.ExpiryWarnings {
		o.ExpiryWarnings = append(o.ExpiryWarnings, w.Duration)
	}
	return o
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// policy builds the filter's view of [policy].
func (c *Config) policy() filter.Policy {
	p := filter.Policy{
		Default:   filter.MissingPolicy(c.Policy.MissingCertificate),
		Domains:   map[string]filter.MissingPolicy{},
		Addresses: map[string]filter.MissingPolicy{},
	}
	// filter.NewBackend folds the keys' domains to lower case.
	for k, v := range c.Policy.Domains {
		p.Domains[k] = filter.MissingPolicy(v)
	}
	for k, v := range c.Policy.Addresses {
		p.Addresses[k] = filter.MissingPolicy(v)
	}
	return p
}

// printEffective writes the settings in force, defaults included, as TOML,
// so an administrator sees what the daemon will do.
func (c *Config) printEffective(w io.Writer) error {
	fmt.Fprintf(w, "# effective settings of %s\n", c.path)
	return toml.NewEncoder(w).Encode(c)
}

// logNotes tells, at start, what check tells about keys that are accepted
// but have no effect.
func (c *Config) logNotes(log *slog.Logger) {
	for _, n := range c.notes {
		log.Warn("configuration: "+n, "config", c.path)
	}
}

// spoolBase is the directory the daemon makes its private spool directory
// in: spool.dir, else the service's cache directory (systemd's
// CacheDirectory=, the first of them if there are several), else /var/tmp.
// Both are on disk: a spool in /run or a tmpfs /tmp would hold large
// messages in memory after all, which is what spooling is for avoiding.
func (c *Config) spoolBase() string {
	if c.Spool.Dir != "" {
		return c.Spool.Dir
	}
	if cd, _, _ := strings.Cut(os.Getenv("CACHE_DIRECTORY"), ":"); cd != "" {
		return cd
	}
	return "/var/tmp"
}
