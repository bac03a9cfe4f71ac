package enroll

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
)

// List returns every enrolled certificate and every pending request,
// sorted by address.
func (e *Engine) List() ([]Entry, error) {
	now := e.opts.Now()
	var out []Entry
	err := e.locked(false, func(st *state) error {
		for _, a := range st.active {
			en := Entry{Address: a.Address, Fingerprint: a.Fingerprint, Kind: a.Kind, NotAfter: a.cred.NotAfter,
				Source: "enrollment", State: StateActive, Requester: a.RequestedBy, Since: a.EnrolledAt}
			if until, err := e.kinds[a.Kind].Usable(a.cred, now); err != nil {
				en.State, en.Reason = StateUnusable, err.Error()
			} else {
				en.NotAfter = until
			}
			out = append(out, en)
		}
		for _, p := range st.pending {
			en := Entry{Address: p.Address, Fingerprint: p.Fingerprint, Kind: p.Kind, NotAfter: p.cred.NotAfter,
				Source: "enrollment", Requester: p.Requester, Since: p.Created}
			if p.State == stateConfirmed {
				en.State, en.Until = StateScheduled, p.ActivateAt
			} else {
				en.State = StateAwaiting
				for _, c := range p.Codes {
					if c.Expires.After(en.Until) {
						en.Until = c.Expires
					}
				}
			}
			out = append(out, en)
		}
		return nil
	})
	slices.SortStableFunc(out, func(a, b Entry) int {
		return cmpOr(strings.Compare(a.Address, b.Address), strings.Compare(a.Fingerprint, b.Fingerprint))
	})
	return out, err
}

// Log returns the change log, oldest first.
func (e *Engine) Log() ([]LogEntry, error) {
	var out []LogEntry
	err := e.locked(false, func(*state) error {
		var err error
		out, err = readLog(filepath.Join(e.opts.Dir, logFile))
		return err
	})
	return out, err
}

// Remove takes an enrolled certificate (and any request for it) away from
// an address, for an administrator. The certificate store stops using it
// at its next reload of the active directory. The Outgoing tell the
// address: the certificates still active and the removed one.
func (e *Engine) Remove(addr, fp string) ([]Outgoing, error) {
	if e.opts.ReadOnly {
		return nil, ErrReadOnly
	}
	addr = normalize(addr)
	fp = strings.ToLower(strings.ReplaceAll(fp, ":", ""))
	now := e.opts.Now()
	var out []Outgoing
	err := e.locked(true, func(st *state) error {
		found := false
		if a := st.activeFor(addr, fp); a != nil {
			if err := e.removeActive(st, a); err != nil {
				return err
			}
			if err := e.appendLog(LogEntry{Time: now, Address: addr, Action: ActionRemove, Fingerprint: fp,
				Requester: "admin", Kind: a.Kind, Request: a.Request, Outcome: "removed by the administrator"}); err != nil {
				return err
			}
			rest := e.usable(st, addr, now, fp)
			ent, err := e.entity(addr, "A "+noun(a.cred)+" for your encrypted mail was removed", now, e.removedText(addr, a.cred, rest))
			if err != nil {
				return err
			}
			out = append(out, outgoing(addr, withHolder(rest, holderOf(a.cred, a.cred.NotAfter)), ent, "removed"))
			found = true
		}
		for _, p := range slices.Clone(st.pending) {
			if p.Address == addr && p.Fingerprint == fp {
				res, err := e.cancel(st, p, "admin", "by the administrator", now)
				if err != nil {
					return err
				}
				out = append(out, res.Outgoing...)
				found = true
			}
		}
		if !found {
			return fmt.Errorf("%w: %s %s", ErrNotFound, addr, fp)
		}
		return nil
	})
	return out, err
}

// Cancel stops every pending request of an address, for an administrator.
// Each cancelled request gives one Outgoing, a notice to the address.
func (e *Engine) Cancel(addr string) ([]Outgoing, error) {
	if e.opts.ReadOnly {
		return nil, ErrReadOnly
	}
	addr = normalize(addr)
	now := e.opts.Now()
	var out []Outgoing
	err := e.locked(true, func(st *state) error {
		for _, p := range slices.Clone(st.pending) {
			if p.Address != addr {
				continue
			}
			res, err := e.cancel(st, p, "admin", "by the administrator", now)
			if err != nil {
				return err
			}
			out = append(out, res.Outgoing...)
		}
		if len(out) == 0 {
			return fmt.Errorf("%w: no pending request for %s", ErrNotFound, addr)
		}
		return nil
	})
	return out, err
}
