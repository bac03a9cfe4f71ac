package main

import (
	"log/slog"
	"strconv"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// notifier speaks sd_notify(3) when systemd (Type=notify) asked for it by
// setting NOTIFY_SOCKET, and is silent otherwise.
type notifier struct{ log *slog.Logger }

func newNotifier(log *slog.Logger) *notifier { return &notifier{log: log} }

func (n *notifier) send(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		n.log.Warn("sd_notify failed", "state", state, "error", err)
	}
}

func (n *notifier) ready(status string) { n.send("READY=1\nSTATUS=" + status) }

// watchdog pings systemd at half the WatchdogSec interval, with the status
// line, for as long as the daemon's main loop runs.
func (n *notifier) watchdog(status func() string) (stop func()) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil || interval <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(interval / 2)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				n.send("WATCHDOG=1\nSTATUS=" + status())
			}
		}
	}()
	return func() { close(done) }
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, which systemd 253+
// wants with RELOADING=1 (Type=notify-reload); older versions ignore it.
func monotonicUsec() string {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return strconv.FormatInt(ts.Sec*1_000_000+ts.Nsec/1000, 10)
}
