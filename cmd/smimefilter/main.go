// Command smimefilter is an LMTP filter for Postfix and Dovecot that stores
// mail S/MIME-encrypted for each recipient (RFC 2033 LMTP in and out,
// RFC 8551 S/MIME, RFC 5652 CMS). See smimefilter(8) and README.md.
//
// This package does only what a main does: flags, configuration, logging,
// listeners (its own or systemd's), signals and sd_notify.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/smimefilter/smimefilter/certs"
	"github.com/smimefilter/smimefilter/deliver"
	"github.com/smimefilter/smimefilter/enroll"
	"github.com/smimefilter/smimefilter/filter"
	"github.com/smimefilter/smimefilter/pgpmime"
	"github.com/smimefilter/smimefilter/server"
	"github.com/smimefilter/smimefilter/spool"
)

// version is set at build time by packaging/build-deb.sh.
var version = "dev"

const defaultConfigPath = "/etc/smimefilter/smimefilter.toml"

// Exit codes: 2 is a configuration error, which systemd must not retry
// (RestartPreventExitStatus=2 in smimefilter.service).
const (
	exitOK      = 0
	exitFailure = 1
	exitConfig  = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 {
		// What people type before they read the manual.
		switch args[0] {
		case "-h", "-help", "--help":
			args[0] = "help"
		case "-version", "--version":
			args[0] = "version"
		}
		if !strings.HasPrefix(args[0], "-") {
			cmd, args = args[0], args[1:]
		}
	}
	switch cmd {
	case "run":
		return cmdRun(args, stdout, stderr)
	case "check":
		return cmdCheck(args, stdout, stderr)
	case "demo":
		return cmdDemo(args, stdout, stderr)
	case "certs":
		return cmdCerts(args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "smimefilter", versionString())
		return exitOK
	case "help":
		usage(stdout)
		return exitOK
	}
	fmt.Fprintf(stderr, "smimefilter: unknown command %q\n", cmd)
	usage(stderr)
	return exitConfig
}

const usageText = `smimefilter: S/MIME-encrypting LMTP filter between Postfix and Dovecot

usage:
  smimefilter [run] [-config FILE]   run the daemon
  smimefilter check [-config FILE]   validate the configuration and the certificates,
                                     print the effective settings; exit 2 on a problem
  smimefilter demo [-dir DIR] [-address HOST:PORT]
                                     run on a generated demo certificate, delivering
                                     into a Maildir under DIR (default ./smimefilter-demo,
                                     address 127.0.0.1:10024); no Postfix or Dovecot needed
  smimefilter certs list [-config FILE]
                                     every certificate (directory and enrolled): address,
                                     fingerprint, expiry, source, state
  smimefilter certs log [-config FILE]
                                     the enrollment change log, oldest first
  smimefilter certs remove [-config FILE] ADDRESS FINGERPRINT
                                     remove an enrolled certificate; the address is told
  smimefilter certs cancel [-config FILE] ADDRESS
                                     cancel an address's pending enrollments; it is told
  smimefilter version                print the version (also --version)
  smimefilter help                   print this text (also -h, --help)

  -config FILE   default ` + defaultConfigPath + `

SIGTERM or SIGINT stop the daemon gracefully, SIGHUP reloads the certificates.
See smimefilter(8) and smimefilter.toml(5).
`

func usage(w io.Writer) { fmt.Fprint(w, usageText) }

// versionString is the version packaging/build-deb.sh set, else the one
// the Go toolchain recorded (a tag for go install, a VCS pseudo-version for
// a build from a checkout).
func versionString() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return version
}

// parseFlags parses a command's flags. -h prints the usage on stdout and
// is not an error; ok false means the caller returns code.
func parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) (code int, ok bool) {
	fs.SetOutput(stderr)
	fs.Usage = func() {} // the error alone; the usage follows below
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		usage(stdout)
		return exitOK, false
	case err != nil:
		usage(stderr)
		return exitConfig, false
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "smimefilter %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return exitConfig, false
	}
	return exitOK, true
}

// configFromArgs parses -config and loads that file, reporting any problem
// on stderr; nil means the caller returns code.
func configFromArgs(name string, args []string, stdout, stderr io.Writer) (c *Config, code int) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	path := fs.String("config", defaultConfigPath, "configuration file")
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return nil, code
	}
	c, err := loadConfig(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return nil, exitConfig
	}
	return c, exitOK
}

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	c, code := configFromArgs("check", args, stdout, stderr)
	if c == nil {
		return code
	}
	for _, n := range c.notes {
		fmt.Fprintf(stderr, "%s:%s\n", c.path, n)
	}
	if err := c.printEffective(stdout); err != nil {
		fmt.Fprintln(stderr, err)
		return exitFailure
	}
	if c.Certs.Dir == "" && c.Enroll.Address == "" {
		fmt.Fprintln(stdout, "\n# certificates: none configured ([certs] dir is not set); policy.missing_certificate applies to every recipient")
		return exitOK
	}
	st, err := certs.Load(c.certOptions())
	if err != nil {
		fmt.Fprintf(stderr, "%s:certs.dir: %v\n", c.path, err)
		return exitConfig
	}
	reportCerts(stdout, st, time.Now())
	return exitOK
}

func reportCerts(w io.Writer, st *certs.Store, now time.Time) {
	all := st.Certs()
	fmt.Fprintf(w, "\n# certificates loaded: %d\n", len(all))
	for _, c := range all {
		fmt.Fprintf(w, "#   %s  (%s: %s)\n", certLine(c), c.Source, c.File)
	}
	keys := st.Keys()
	fmt.Fprintf(w, "# OpenPGP keys loaded: %d\n", len(keys))
	for _, k := range keys {
		usable := ""
		if !k.UsableAt(now) {
			usable = "  not usable now"
		}
		fmt.Fprintf(w, "#   %s%s  (%s)\n", keyLine(k), usable, k.File)
	}
	skipped := st.Skipped()
	fmt.Fprintf(w, "# files, certificates or keys skipped: %d\n", len(skipped))
	for _, s := range skipped {
		subj := ""
		if s.Subject != "" {
			subj = " " + s.Subject
		}
		fmt.Fprintf(w, "#   %s%s: %v\n", s.File, subj, s.Err)
	}
	soon := st.ExpiringWithin(30 * 24 * time.Hour)
	fmt.Fprintf(w, "# expiring within 30 days: %d\n", len(soon)+len(st.KeysExpiringWithin(30*24*time.Hour)))
	for _, c := range soon {
		fmt.Fprintf(w, "#   %s (in %d days)  %s\n", certLine(c), int(c.ValidUntil().Sub(now).Hours()/24), c.Source)
	}
	for _, k := range st.KeysExpiringWithin(30 * 24 * time.Hour) {
		fmt.Fprintf(w, "#   %s (in %d days)\n", keyLine(k), int(k.ValidUntil().Sub(now).Hours()/24))
	}
}

// keyLine names an OpenPGP key in check's report.
func keyLine(k *certs.Key) string {
	exp := "never"
	if t := k.ValidUntil(); !t.IsZero() {
		exp = t.UTC().Format(time.RFC3339)
	}
	return strings.Join(k.Addresses, ",") + "  openpgp:" + k.Fingerprint + "  expires " + exp
}

// certLine names a certificate in check's report.
func certLine(c *certs.Cert) string {
	return strings.Join(c.Addresses, ",") + "  sha256:" + c.Fingerprint + "  expires " + c.ValidUntil().UTC().Format(time.RFC3339)
}

func (c *Config) certOptions() certs.Options {
	o := certs.Options{Dir: c.Certs.Dir, Roots: c.roots}
	if c.Enroll.Address != "" {
		// enroll.Engine.ActiveDir; check reads it without opening the
		// engine (which would create the state directory).
		o.EnrolledDir = filepath.Join(c.Enroll.Dir, "active")
	}
	return o
}

func newLogger(c *Config, w io.Writer) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(c.Log.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	c, code := configFromArgs("run", args, stdout, stderr)
	if c == nil {
		return code
	}
	return serve(c, stderr, nil)
}

// serve runs the daemon until SIGTERM or SIGINT. ready, if not nil, is
// called with the listener's address once mail is accepted.
func serve(c *Config, stderr io.Writer, ready func(net.Addr)) int {
	log := newLogger(c, stderr)
	n := newNotifier(log)
	c.logNotes(log)

	// The engine first: it creates the directory the store reads.
	var engine *enroll.Engine
	hooks := &enrollHooks{}
	if c.Enroll.Address != "" {
		var err error
		if engine, err = openEnroll(c, hooks); err != nil {
			log.Error("enrollment", "dir", c.Enroll.Dir, "error", err)
			return exitFailure
		}
		defer engine.Close()
	}

	var holder *certs.Holder
	if c.Certs.Dir != "" || engine != nil {
		var err error
		holder, err = certs.NewHolder(c.certOptions(), log)
		if err != nil {
			log.Error("loading certificates", "dir", c.Certs.Dir, "error", err)
			return exitConfig
		}
	}

	target, err := newTarget(c)
	if err != nil {
		log.Error("delivery target", "error", err)
		return exitConfig
	}
	defer target.Close()
	var reinject deliver.Target
	if c.Deliver.Reinject != "" {
		reinject = deliver.NewPool(poolOptions(c, c.Deliver.Reinject, false))
		defer reinject.Close()
	}

	spoolDir, err := spool.PrivateDir(c.spoolBase())
	if err != nil {
		log.Error("spool directory", "error", err)
		return exitFailure
	}
	defer os.RemoveAll(spoolDir)

	fcfg := filter.Config{
		Rewriter:           c.rewriter,
		LookupRewritten:    c.Certs.Lookup == "rewritten",
		RecipientDelimiter: c.Certs.RecipientDelimiter,
		Policy:             c.policy(),
		SMIME:              smimeOptions(c),
		OpenPGP:            pgpmime.Options{HeaderProtection: c.Policy.HeaderProtection, HideRecipients: c.Policy.HiddenRecipients},
		Prefer:             filter.Prefer(c.Policy.Prefer),
		Deliver:            target,
		Reinject:           reinject,
		MaxHeaderBytes:     c.Limits.MaxHeaderSize,
		SpoolDir:           spoolDir,
		SpoolMemory:        c.Spool.Memory,
		Logger:             log,
	}
	if holder != nil {
		fcfg.Certs = holder
	}
	fcfg.HostedDomains = hostedDomains(c)
	if engine != nil {
		fcfg.Enroll = filter.EnrollConfig{Address: c.Enroll.Address, Engine: engine, MaxMessageSize: c.Enroll.MaxMessageSize}
	}
	be := filter.NewBackend(fcfg)
	hooks.be, hooks.holder = be, holder
	srv := server.New(be, server.Options{
		Hostname:        c.Listen.Hostname,
		MaxMessageBytes: c.Limits.MaxMessageSize,
		MaxRecipients:   c.Limits.MaxRecipients,
		MaxLineLength:   c.Limits.MaxLineLength,
		MaxConnections:  c.Listen.MaxConnections,
		ReadTimeout:     c.Listen.ReadTimeout.Duration,
		WriteTimeout:    c.Listen.WriteTimeout.Duration,
		Logger:          log,
	})

	l, activated, err := listener(c)
	if err != nil {
		log.Error("listener", "error", err)
		var ce errConfig
		if errors.As(err, &ce) {
			return exitConfig
		}
		return exitFailure
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if holder != nil {
		go holder.Watch(ctx) // it retries on its own and returns only when ctx ends
	}
	if engine != nil {
		// Stopped before the engine closes (deferred earlier, runs later).
		stopTicks := startTicks(engine, be, tickInterval(c), log)
		defer stopTicks()
		log.Info("enrollment on", "address", c.Enroll.Address, "dir", c.Enroll.Dir, "change_delay", c.Enroll.ChangeDelay.Duration)
	}

	wl := &watchedListener{Listener: l}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(wl) }()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)

	log.Info("smimefilter started", "version", version, "listen", l.Addr().String(), "activated", activated,
		"deliver", target, "rewrite_rules", c.rewriter.Len(), "certificates", certCount(holder))
	if ready != nil {
		ready(l.Addr())
	}
	status := func() string {
		return fmt.Sprintf("%d connections; %d delivered, %d deferred, %d rejected",
			be.Stats.Connections.Load(), be.Stats.Delivered.Load(), be.Stats.Deferred.Load(), be.Stats.Rejected.Load())
	}
	n.ready(status())
	stopWatchdog := n.watchdog(newSelfCheck(holder, log, wl).run, status)
	defer stopWatchdog()

	for {
		select {
		case err := <-serveErr:
			log.Error("listener failed", "error", err)
			n.send("STOPPING=1")
			srv.Shutdown(0)
			return exitFailure
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				n.send("RELOADING=1\nMONOTONIC_USEC=" + monotonicUsec())
				if holder != nil {
					_ = holder.Reload() // logged by Reload; the old set stays current
				}
				n.ready(status())
				continue
			}
			log.Info("shutting down", "signal", sig.String(), "grace", c.Listen.ShutdownGrace.Duration)
			n.send("STOPPING=1")
			srv.Shutdown(c.Listen.ShutdownGrace.Duration)
			log.Info("stopped", "status", status())
			return exitOK
		}
	}
}

func certCount(h *certs.Holder) int {
	if h == nil {
		return 0
	}
	return len(h.Current().Certs())
}

func newTarget(c *Config) (interface {
	deliver.Target
	String() string
}, error) {
	if c.Deliver.Maildir != "" {
		m, err := deliver.NewMaildir(c.Deliver.Maildir)
		if err != nil {
			return nil, err
		}
		return maildirTarget{m}, nil
	}
	return deliver.NewPool(poolOptions(c, c.Deliver.LMTP, true)), nil
}

type maildirTarget struct{ *deliver.Maildir }

func (m maildirTarget) String() string { return "maildir:" + m.Template }

func poolOptions(c *Config, addr string, lmtp bool) deliver.PoolOptions {
	network := "tcp"
	if strings.HasPrefix(addr, "/") {
		network = "unix"
	}
	d := &c.Deliver
	return deliver.PoolOptions{
		Network: network, Addr: addr, LMTP: lmtp,
		LocalName:       c.Listen.Hostname,
		MaxConns:        d.MaxConnections,
		MaxIdle:         d.MaxIdle,
		IdleTimeout:     d.IdleTimeout.Duration,
		MaxTransactions: d.MaxTransactions,
		MaxLifetime:     d.MaxLifetime.Duration,
		DialTimeout:     d.DialTimeout.Duration,
		CommandTimeout:  d.CommandTimeout.Duration,
		DataTimeout:     d.DataTimeout.Duration,
	}
}
