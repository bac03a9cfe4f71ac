package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/smimefilter/smimefilter/enroll"
)

// TestTickPanicStaysInItsRound: a panic in the enrollment tick (here a nil
// engine) is logged with its stack, keeps what was owed, and returns.
func TestTickPanicStaysInItsRound(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	owed := []enroll.Outgoing{{To: "a@example.org", Purpose: "notice"}}
	left := tickOnce(context.Background(), nil, nil, owed, log)
	if len(left) != 1 || left[0].To != "a@example.org" {
		t.Errorf("owed notices after the panic: %+v, want the one owed before", left)
	}
	if s := logs.String(); !strings.Contains(s, "enrollment tick") || !strings.Contains(s, "goroutine") {
		t.Errorf("panic not logged with its stack:\n%s", s)
	}
}
