package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"runtime/debug"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/smimefilter/smimefilter/certs"
	"github.com/smimefilter/smimefilter/deliver"
	"github.com/smimefilter/smimefilter/enroll"
	"github.com/smimefilter/smimefilter/filter"
	"github.com/smimefilter/smimefilter/pgpmime"
	"github.com/smimefilter/smimefilter/smime"
)

// Enrollment by signed mail ([enroll], package enroll): the daemon opens
// the engine, hands it the mail to enroll.address (package filter), runs
// its Tick and delivers what that returns; the certs commands show and
// change its state beside a running daemon (the engine locks its
// directory per operation).

// enrollHooks connects an engine to the daemon's filter and certificate
// store, both made after the engine: the store reads the directory the
// engine creates, the filter takes the engine.
type enrollHooks struct {
	be     *filter.Backend
	holder *certs.Holder
}

// openEnroll opens the engine of [enroll] with its hooks.
func openEnroll(c *Config, h *enrollHooks) (*enroll.Engine, error) {
	o := c.enrollOptions()
	o.Delivers = func(addr string) bool { return h.be.Delivers(addr) }
	o.Current = func(addr string) []*x509.Certificate {
		if h.holder == nil {
			return nil
		}
		var out []*x509.Certificate
		for _, cert := range h.holder.Current().Lookup(addr) {
			out = append(out, cert.Certificate)
		}
		return out
	}
	o.CurrentKeys = func(addr string) []*certs.Key {
		if h.holder == nil {
			return nil
		}
		return h.holder.Current().LookupKeys(addr)
	}
	o.Addresses = func() []string {
		if h.holder == nil {
			return nil
		}
		var out []string
		st := h.holder.Current()
		for _, cert := range st.Certs() {
			if cert.Source == certs.SourceDirectory {
				out = append(out, cert.Addresses...)
			}
		}
		for _, k := range st.Keys() {
			if k.Source == certs.SourceDirectory {
				out = append(out, k.Addresses...)
			}
		}
		return out
	}
	return enroll.Open(o)
}

// tickInterval is how often the daemon runs the engine's Tick: once a
// minute, more often when change_delay is short (a test's "2s"), so that
// a change takes effect close to its time.
func tickInterval(c *Config) time.Duration {
	return min(time.Minute, max(time.Second, c.Enroll.ChangeDelay.Duration/4))
}

// maxOwed bounds the notices kept for another try when the mail store is
// down: a long outage must not grow memory without end.
const maxOwed = 1000

// tickLoop runs Tick once at once, then every interval until ctx ends, and
// delivers what it returns; what could not be delivered is tried again at
// the next tick.
func tickLoop(ctx context.Context, e *enroll.Engine, be *filter.Backend, interval time.Duration, log *slog.Logger) {
	var owed []enroll.Outgoing
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		owed = tickOnce(ctx, e, be, owed, log)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// tickOnce is one round of tickLoop. A panic in it (a bug in the engine
// or in making a notice) is logged with its stack and ends only this
// round: it must not take the daemon, and every transaction under way,
// down with it, nor make a crash loop of the Tick at start-up. The notices
// owed before the round stay owed.
func tickOnce(ctx context.Context, e *enroll.Engine, be *filter.Backend, owed []enroll.Outgoing, log *slog.Logger) (left []enroll.Outgoing) {
	left = owed
	defer func() {
		if v := recover(); v != nil {
			log.Error("panic", "where", "enrollment tick", "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
		}
	}()
	out, err := e.Tick(time.Now())
	if err != nil {
		// Its Outgoing are owed all the same: their state change is
		// on disk.
		log.Error("enrollment tick", "error", err)
	}
	owed = append(owed, out...)
	owed = append(owed, be.TakeOwed()...)
	if len(owed) > 0 {
		owed, _ = be.DeliverEnrollment(ctx, owed) // each failure is logged
		if n := len(owed) - maxOwed; n > 0 {
			log.Error("enrollment notices dropped after failed deliveries", "count", n)
			owed = owed[n:]
		}
	}
	return owed
}

// startTicks starts tickLoop; the returned function stops it and waits.
func startTicks(e *enroll.Engine, be *filter.Backend, interval time.Duration, log *slog.Logger) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { tickLoop(ctx, e, be, interval, log) })
	return func() { cancel(); wg.Wait() }
}

// cmdCerts is "smimefilter certs SUBCOMMAND".
func cmdCerts(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
			usage(stdout)
			return exitOK
		}
		fmt.Fprint(stderr, "smimefilter certs: want list, log, remove or cancel\n")
		usage(stderr)
		return exitConfig
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("certs "+sub, flag.ContinueOnError)
	path := fs.String("config", defaultConfigPath, "configuration file")
	want := map[string]int{"list": 0, "log": 0, "remove": 2, "cancel": 1}
	n, known := want[sub]
	if !known {
		fmt.Fprintf(stderr, "smimefilter certs: unknown subcommand %q\n", sub)
		usage(stderr)
		return exitConfig
	}
	// Flags may come before or after the operands.
	var operands []string
	for {
		if code, ok := parseFlagsOperands(fs, args, stdout, stderr); !ok {
			return code
		}
		if fs.NArg() == 0 {
			break
		}
		operands = append(operands, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(operands) != n {
		fmt.Fprintf(stderr, "smimefilter certs %s: want %d arguments, got %d\n", sub, n, len(operands))
		usage(stderr)
		return exitConfig
	}
	c, err := loadConfig(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitConfig
	}
	switch sub {
	case "list":
		return certsList(c, stdout, stderr, time.Now())
	case "log":
		return certsLog(c, stdout, stderr)
	}
	return certsChange(c, sub, operands, stdout, stderr)
}

// parseFlagsOperands is parseFlags that leaves operands to the caller.
func parseFlagsOperands(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) (int, bool) {
	fs.SetOutput(stderr)
	fs.Usage = func() {}
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		usage(stdout)
		return exitOK, false
	case err != nil:
		usage(stderr)
		return exitConfig, false
	}
	return exitOK, true
}

// openReadOnly opens the engine for list and log; nil with exitOK means
// nothing was ever enrolled (no state directory yet).
func openReadOnly(c *Config, stderr io.Writer) (*enroll.Engine, int) {
	if c.Enroll.Address == "" {
		return nil, exitOK
	}
	o := c.enrollOptions()
	o.ReadOnly = true
	e, err := enroll.Open(o)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, exitOK
		}
		fmt.Fprintf(stderr, "%s:enroll.dir: %v\n", c.path, err)
		return nil, exitFailure
	}
	return e, exitOK
}

// soon is how far ahead list and check call an expiry near.
const soon = 30 * 24 * time.Hour

func certsList(c *Config, stdout, stderr io.Writer, now time.Time) int {
	tw := tabwriter.NewWriter(stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tFINGERPRINT (SHA-256)\tEXPIRES\tSOURCE\tSTATE")
	expires := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		s := t.UTC().Format(time.RFC3339)
		if t.Sub(now) < soon {
			s += fmt.Sprintf(" (soon: %d days)", int(t.Sub(now).Hours()/24))
		}
		return s
	}
	if c.Certs.Dir != "" {
		st, err := certs.Load(certs.Options{Dir: c.Certs.Dir, Roots: c.roots})
		if err != nil {
			fmt.Fprintf(stderr, "%s:certs.dir: %v\n", c.path, err)
			return exitConfig
		}
		for _, cert := range st.Certs() {
			state := "active"
			if !cert.UsableAt(now) {
				state = "not usable now"
			}
			for _, a := range cert.Addresses {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", a, cert.Fingerprint, expires(cert.ValidUntil()), certs.SourceDirectory, state)
			}
		}
		for _, k := range st.Keys() {
			state := "active"
			if !k.UsableAt(now) {
				state = "not usable now"
			}
			for _, a := range k.Addresses {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", a, "openpgp:"+k.Fingerprint, expires(k.ValidUntil()), certs.SourceDirectory, state)
			}
		}
	}
	e, code := openReadOnly(c, stderr)
	if code != exitOK {
		return code
	}
	if e != nil {
		defer e.Close()
		entries, err := e.List()
		if err != nil {
			fmt.Fprintf(stderr, "%s:enroll.dir: %v\n", c.path, err)
			return exitFailure
		}
		for _, en := range entries {
			state := string(en.State)
			switch {
			case !en.Until.IsZero():
				state += " until " + en.Until.UTC().Format(time.RFC3339)
			case en.Reason != "":
				state += ": " + en.Reason
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", en.Address, en.Fingerprint, expires(en.NotAfter), certs.SourceEnrollment, state)
		}
	}
	if err := tw.Flush(); err != nil {
		return exitFailure
	}
	return exitOK
}

func certsLog(c *Config, stdout, stderr io.Writer) int {
	if c.Enroll.Address == "" {
		fmt.Fprintf(stderr, "%s:enroll.address: not set, enrollment is off\n", c.path)
		return exitConfig
	}
	e, code := openReadOnly(c, stderr)
	if e == nil {
		return code
	}
	defer e.Close()
	entries, err := e.Log()
	if err != nil {
		fmt.Fprintf(stderr, "%s:enroll.dir: %v\n", c.path, err)
		return exitFailure
	}
	tw := tabwriter.NewWriter(stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tADDRESS\tACTION\tFINGERPRINT\tREQUESTER\tOUTCOME")
	for _, le := range entries {
		fp := le.Fingerprint
		if fp == "" {
			fp = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", le.Time.UTC().Format(time.RFC3339), le.Address, le.Action, fp, le.Requester, le.Outcome)
	}
	if err := tw.Flush(); err != nil {
		return exitFailure
	}
	return exitOK
}

// certsChange is remove and cancel: a normal engine beside the daemon's,
// and the notices they cause delivered as the daemon would, through the
// configured target.
func certsChange(c *Config, sub string, operands []string, stdout, stderr io.Writer) int {
	if c.Enroll.Address == "" {
		fmt.Fprintf(stderr, "%s:enroll.address: not set, enrollment is off\n", c.path)
		return exitConfig
	}
	log := newLogger(c, stderr)
	be, closeBe, err := noticeBackend(c, log)
	if err != nil {
		fmt.Fprintf(stderr, "smimefilter certs %s: %v\n", sub, err)
		return exitConfig
	}
	defer closeBe()
	h := &enrollHooks{be: be}
	if h.holder, err = certs.NewHolder(c.certOptions(), nil); err != nil {
		fmt.Fprintf(stderr, "%s:certs.dir: %v\n", c.path, err)
		return exitConfig
	}
	e, err := openEnroll(c, h)
	if err != nil {
		fmt.Fprintf(stderr, "%s:enroll.dir: %v\n", c.path, err)
		return exitFailure
	}
	defer e.Close()
	var out []enroll.Outgoing
	if sub == "remove" {
		out, err = e.Remove(operands[0], strings.ToLower(strings.TrimPrefix(operands[1], "sha256:")))
	} else {
		out, err = e.Cancel(operands[0])
	}
	if err != nil {
		fmt.Fprintf(stderr, "smimefilter certs %s: %v\n", sub, err)
		if errors.Is(err, enroll.ErrNotFound) {
			return exitConfig
		}
		return exitFailure
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	failed, err := be.DeliverEnrollment(ctx, out)
	fmt.Fprintf(stdout, "%s: done; %d of %d notices delivered\n", sub, len(out)-len(failed), len(out))
	if err != nil {
		// The change stands; only the telling failed, and it is logged.
		fmt.Fprintf(stderr, "smimefilter certs %s: notices not delivered (dropped): %v\n", sub, err)
		return exitFailure
	}
	return exitOK
}

// noticeBackend is a filter backend that only delivers enrollment
// notices: the daemon's target, rewriting and S/MIME settings, no
// listener.
func noticeBackend(c *Config, log *slog.Logger) (*filter.Backend, func(), error) {
	target, err := newTarget(c)
	if err != nil {
		return nil, nil, err
	}
	// As the daemon's (main.go), so that notices look and go as the
	// daemon's would. Without an Engine: nothing here reads mail.
	cfg := filter.Config{
		Rewriter:           c.rewriter,
		RecipientDelimiter: c.Certs.RecipientDelimiter,
		Policy:             c.policy(),
		SMIME:              smimeOptions(c),
		OpenPGP:            pgpmime.Options{HeaderProtection: c.Policy.HeaderProtection, HideRecipients: c.Policy.HiddenRecipients},
		Deliver:            target,
		Logger:             log,
	}
	var reinject deliver.Target
	if c.Deliver.Reinject != "" {
		reinject = deliver.NewPool(poolOptions(c, c.Deliver.Reinject, false))
		cfg.Reinject, cfg.HostedDomains = reinject, hostedDomains(c)
	}
	return filter.NewBackend(cfg), func() {
		target.Close()
		if reinject != nil {
			reinject.Close()
		}
	}, nil
}

func smimeOptions(c *Config) smime.Options {
	o := smime.Options{HeaderProtection: c.Policy.HeaderProtection}
	if c.Policy.KeyTransport == "rsa-oaep" {
		o.KeyTransport = smime.RSAOAEP
	}
	return o
}

func hostedDomains(c *Config) map[string]bool {
	if len(c.Deliver.HostedDomains) == 0 {
		return nil
	}
	m := map[string]bool{}
	for _, d := range c.Deliver.HostedDomains {
		m[d] = true
	}
	return m
}
