package enroll

import (
	"slices"
	"time"

	"github.com/smimefilter/smimefilter/certs"
)

// Tick does what is due at now: activations whose delay has passed,
// requests whose codes all expired, expiry warnings. Call it about once a
// minute, and once after Open. The Outgoing it returns are owed even when
// it also returns an error: their state change is already on disk.
func (e *Engine) Tick(now time.Time) ([]Outgoing, error) {
	if e.opts.ReadOnly {
		return nil, ErrReadOnly
	}
	var out []Outgoing
	err := e.locked(true, func(st *state) error {
		out = append(out, e.owed...)
		e.owed = nil
		for _, p := range slices.Clone(st.pending) {
			switch p.State {
			case stateChallenged:
				live := slices.DeleteFunc(slices.Clone(p.Codes), func(c codeRecord) bool { return !c.live(now) })
				if len(live) == 0 {
					if err := e.removePending(st, p); err != nil {
						return err
					}
					if err := e.appendLog(LogEntry{Time: now, Address: p.Address, Action: ActionExpire, Fingerprint: p.Fingerprint,
						Requester: p.Requester, Kind: p.Kind, Request: p.ID, Outcome: "not confirmed in time"}); err != nil {
						return err
					}
				} else if len(live) != len(p.Codes) {
					p.Codes = live
					if err := e.savePending(p); err != nil {
						return err
					}
				}
			case stateConfirmed:
				if now.Before(p.ActivateAt) {
					continue
				}
				if _, err := e.kinds[p.Kind].Usable(p.cred, now); err != nil {
					if rerr := e.removePending(st, p); rerr != nil {
						return rerr
					}
					if lerr := e.appendLog(LogEntry{Time: now, Address: p.Address, Action: ActionDrop, Fingerprint: p.Fingerprint,
						Requester: p.Requester, Kind: p.Kind, Request: p.ID, Outcome: "not usable any more: " + err.Error()}); lerr != nil {
						return lerr
					}
					continue
				}
				o, err := e.activate(st, p, now)
				if err != nil {
					return err
				}
				out = append(out, o)
			}
		}
		notices, err := e.expiryNotices(st, now)
		out = append(out, notices...)
		return err
	})
	return out, err
}

// expiryNotices warns each address whose last usable certificate expires
// within a threshold, once per threshold and certificate: the record is
// written before the notice is handed out, so a restart never repeats it.
// When several thresholds are crossed at once (the daemon was down), only
// the nearest is announced.
func (e *Engine) expiryNotices(st *state, now time.Time) ([]Outgoing, error) {
	if len(e.opts.ExpiryWarnings) == 0 {
		return nil, nil
	}
	addrs := map[string]bool{}
	for _, a := range st.active {
		addrs[a.Address] = true
	}
	if e.opts.Addresses != nil {
		for _, a := range e.opts.Addresses() {
			if n, ok := certs.NormalizeAddress(a); ok {
				addrs[n] = true
			}
		}
	}
	sorted := make([]string, 0, len(addrs))
	for a := range addrs {
		sorted = append(sorted, a)
	}
	slices.Sort(sorted)

	changed := false
	kept := st.notices[:0]
	for _, n := range st.notices {
		if now.Before(n.NotAfter) {
			kept = append(kept, n)
		} else {
			changed = true
		}
	}
	st.notices = kept

	var out []Outgoing
	var logs []LogEntry
	for _, addr := range sorted {
		hs := e.usable(st, addr, now, "")
		if len(hs) == 0 {
			continue
		}
		last := hs[0]
		for _, h := range hs[1:] {
			if endsAfter(h.until, last.until) || (h.until.Equal(last.until) && h.fp < last.fp) {
				last = h
			}
		}
		if last.until.IsZero() {
			continue // an OpenPGP key that does not expire
		}
		var crossed []string
		for _, w := range e.opts.ExpiryWarnings { // longest first
			if !now.Before(last.until.Add(-w)) {
				crossed = append(crossed, w.String())
			}
		}
		if len(crossed) == 0 {
			continue
		}
		i := slices.IndexFunc(st.notices, func(n noticeRecord) bool { return n.Address == addr && n.Fingerprint == last.fp })
		if i < 0 {
			st.notices = append(st.notices, noticeRecord{Address: addr, Fingerprint: last.fp, NotAfter: last.until})
			i = len(st.notices) - 1
		}
		rec := &st.notices[i]
		nearest := crossed[len(crossed)-1]
		if slices.Contains(rec.Sent, nearest) {
			continue
		}
		// Asked only now, when a notice is due: Delivers may ask the mail
		// store, and every address on every tick would be a round trip
		// each, under the engine's lock.
		if !e.opts.Delivers(addr) {
			continue
		}
		for _, c := range crossed {
			if !slices.Contains(rec.Sent, c) {
				rec.Sent = append(rec.Sent, c)
			}
		}
		changed = true
		what := "certificate"
		if last.key != nil {
			what = "OpenPGP key"
		}
		ent, err := e.entity(addr, "Your "+what+" for encrypted mail expires soon", now,
			e.expiryText(addr, last, hs, now))
		if err != nil {
			return nil, err
		}
		out = append(out, outgoing(addr, hs, ent, "expiry"))
		logs = append(logs, LogEntry{Time: now, Address: addr, Action: ActionExpiryNotice, Fingerprint: last.fp,
			Outcome: "warned " + nearest + " ahead of expiry at " + last.until.UTC().Format(time.RFC3339)})
	}
	if changed {
		if err := e.saveNotices(st); err != nil {
			return nil, err
		}
	}
	for _, le := range logs {
		if err := e.appendLog(le); err != nil {
			return out, err
		}
	}
	return out, nil
}
