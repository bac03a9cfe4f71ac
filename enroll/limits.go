package enroll

import (
	"time"
)

const (
	limitWindow = 24 * time.Hour
	// maxTracked bounds the memory of the per-sender counts: envelope
	// senders are free to invent, so a flood of distinct ones must not
	// grow the map without end. Beyond it, unknown senders wait.
	maxTracked = 10000
)

// window counts events per key over the last limitWindow. It lives in
// memory; Open seeds it from the change log, so that a restart does not
// reset the limits on challenges.
type window struct {
	max    int
	events map[string][]time.Time
}

func newWindow(max int) *window { return &window{max: max, events: make(map[string][]time.Time)} }

func (w *window) prune(key string, now time.Time) []time.Time {
	ev := w.events[key]
	i := 0
	for i < len(ev) && !ev[i].After(now.Add(-limitWindow)) {
		i++
	}
	ev = ev[i:]
	if len(ev) == 0 {
		delete(w.events, key)
	} else {
		w.events[key] = ev
	}
	return ev
}

// allow reports whether one more event for key fits.
func (w *window) allow(key string, now time.Time) bool {
	if len(w.prune(key, now)) >= w.max {
		return false
	}
	if _, known := w.events[key]; !known && len(w.events) >= maxTracked {
		for k := range w.events {
			w.prune(k, now)
		}
		return len(w.events) < maxTracked
	}
	return true
}

// add records an event. Events arrive roughly in time order; one older
// than the last is put in place so that prune stays a prefix cut.
func (w *window) add(key string, t time.Time) {
	ev := w.events[key]
	i := len(ev)
	for i > 0 && ev[i-1].After(t) {
		i--
	}
	ev = append(ev, time.Time{})
	copy(ev[i+1:], ev[i:])
	ev[i] = t
	if len(ev) > w.max {
		ev = ev[len(ev)-w.max:]
	}
	w.events[key] = ev
}
