package raidcore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/revcache"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// candidates returns the optimal backends that hold every transaction up
// to need, starting at the next one in round-robin order.
func (a *Array) candidates(ctx context.Context, need zodb.TID) ([]*member, error) {
	opt, err := a.usable(ctx)
	if err != nil {
		return nil, err
	}
	a.evMu.Lock()
	var ok []*member
	for _, m := range opt {
		if !m.reported.Less(need) {
			ok = append(ok, m)
		}
	}
	a.evMu.Unlock()
	if len(ok) == 0 {
		return nil, nil
	}
	a.mu.Lock()
	a.rr++
	start := a.rr % len(ok)
	a.mu.Unlock()
	return append(ok[start:], ok[:start]...), nil
}

// read runs fn on one up-to-date optimal backend, and on the next one if
// it fails (degrading the failed one). Valid answers, errors like
// POSKeyError included, are returned as they are.
func (a *Array) read(ctx context.Context, what string, need zodb.TID, fn func(ctx context.Context, st zodb.Storage) error) error {
	return a.readFor(ctx, what, need, a.cfg.ReadTimeout, fn)
}

// readFor is read with another bound for each backend's call.
func (a *Array) readFor(ctx context.Context, what string, need zodb.TID, timeout time.Duration, fn func(ctx context.Context, st zodb.Storage) error) error {
	if ok, why := a.Ready(); !ok {
		return zodb.NewStorageError("storage %s is not ready: %s", a.cfg.Storage, why)
	}
	tried := map[*member]bool{}
	var lastErr error
	waited := false
	for {
		cands, err := a.candidates(ctx, need)
		if err != nil {
			if lastErr != nil {
				return lastErr
			}
			return err
		}
		var m *member
		for _, c := range cands {
			if !tried[c] {
				m = c
				break
			}
		}
		if m == nil {
			if len(tried) == 0 && !waited {
				// Backends still catching up with need: wait for
				// their reports, once, bounded.
				waited = true
				if a.waitAnnounced(ctx, need) {
					continue
				}
			}
			if lastErr != nil {
				return lastErr
			}
			return errNoBackend(what)
		}
		tried[m] = true
		rctx, cancel := context.WithTimeout(ctx, timeout)
		err = fn(rctx, m.st)
		cancel()
		if !a.backendFailed(ctx, err) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		lastErr = err
		a.degrade(m, fmt.Sprintf("%s failed: %v", what, err))
	}
}

// backendFailed tells whether err, from a backend call made under the
// client's ctx, is evidence against the backend: a failure (isFailure)
// that is not the client's own cancellation or deadline.
func (a *Array) backendFailed(ctx context.Context, err error) bool {
	return isFailure(err) && ctx.Err() == nil
}

// waitAnnounced waits until some optimal backend reported need.
func (a *Array) waitAnnounced(ctx context.Context, need zodb.TID) bool {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.ReadTimeout)
	defer cancel()
	a.evMu.Lock()
	defer a.evMu.Unlock()
	for {
		for _, m := range a.optimal() {
			if !m.reported.Less(need) {
				return true
			}
		}
		if !waitCond(ctx, a.evCond) {
			return false
		}
	}
}

// need is the last transaction a read at before must see: everything below
// before, or everything announced for a current read.
func (a *Array) need(before zodb.TID) zodb.TID {
	a.evMu.Lock()
	defer a.evMu.Unlock()
	if before == zodb.MaxTID || a.announced.Less(before.Prev()) {
		return a.announced
	}
	return before.Prev()
}

// useCache tells whether a read at snapshot need may be answered from
// the revision cache: it is on, reads are not verified across backends,
// the array is ready, and some optimal backend that holds need is
// connected and in step (an array that could not serve the read from a
// backend does not serve it from memory either).
func (a *Array) useCache(need zodb.TID) bool {
	if a.cache == nil || a.cfg.VerifyReads {
		return false
	}
	if ok, _ := a.Ready(); !ok {
		return false
	}
	opt := a.optimal()
	var ready []*member
	a.evMu.Lock()
	for _, m := range opt {
		if m.known && !m.suspect && !m.reported.Less(need) {
			ready = append(ready, m)
		}
	}
	a.evMu.Unlock()
	for _, m := range ready {
		if connected(m) {
			return true
		}
	}
	return false
}

// LoadBefore implements zodb.Loader. The read goes to an optimal backend
// known to hold every transaction the answer depends on (architecture
// invariant 5).
func (a *Array) LoadBefore(ctx context.Context, oid zodb.OID, before zodb.TID) (*zodb.Revision, error) {
	need := a.need(before)
	var tok revcache.Token
	if a.useCache(need) {
		var hit *zodb.Revision
		if hit, tok = a.cache.LoadBefore(oid, before, need); hit != nil {
			return hit, nil
		}
	}
	if before == zodb.MaxTID {
		// A current load is current as of what the array announced: a
		// transaction some backends hold but the array has not announced
		// (its tpc_finish is under way, or its holder stopped in the
		// middle of it) is not committed for the clients yet, and they
		// have had no invalidation for it.
		rev, err := a.loadBefore(ctx, oid, need.Next(), need)
		if err == nil {
			a.cache.Fill(tok, oid, rev, true)
		}
		if rev != nil && !rev.End.IsZero() && need.Less(rev.End) {
			cur := *rev
			cur.End = zodb.ZeroTID
			rev = &cur
		}
		return rev, err
	}
	rev, err := a.loadBefore(ctx, oid, before, need)
	if err == nil {
		a.cache.Fill(tok, oid, rev, false)
	}
	return rev, err
}

func (a *Array) loadBefore(ctx context.Context, oid zodb.OID, before, need zodb.TID) (*zodb.Revision, error) {
	if a.cfg.VerifyReads {
		v, err := a.verifiedRead(ctx, "loadBefore", need, func(ctx context.Context, st zodb.Storage) (any, string, error) {
			rev, err := st.LoadBefore(ctx, oid, before)
			if rev == nil {
				return rev, fmt.Sprintf("none %v", errKey(err)), err
			}
			return rev, fmt.Sprintf("%s %s %x", rev.TID, rev.End, sha256.Sum256(rev.Data)), err
		})
		rev, _ := v.(*zodb.Revision)
		return rev, err
	}
	var rev *zodb.Revision
	err := a.read(ctx, "loadBefore", need, func(ctx context.Context, st zodb.Storage) error {
		var err error
		rev, err = st.LoadBefore(ctx, oid, before)
		return err
	})
	return rev, err
}

func errKey(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// verifiedRead asks two up-to-date backends and compares their answers by
// key; when they differ it asks a third, and degrades whoever is not in
// the majority (with two, the backend configured first wins).
func (a *Array) verifiedRead(ctx context.Context, what string, need zodb.TID, fn func(ctx context.Context, st zodb.Storage) (any, string, error)) (any, error) {
	type answer struct {
		m   *member
		v   any
		key string
		err error
	}
	var answers []answer
	ask := func(m *member) bool {
		rctx, cancel := context.WithTimeout(ctx, a.cfg.ReadTimeout)
		v, key, err := fn(rctx, m.st)
		cancel()
		if isFailure(err) {
			if a.backendFailed(ctx, err) {
				a.degrade(m, fmt.Sprintf("%s failed: %v", what, err))
			}
			return false
		}
		answers = append(answers, answer{m, v, key, err})
		return true
	}
	if ok, why := a.Ready(); !ok {
		return nil, zodb.NewStorageError("storage %s is not ready: %s", a.cfg.Storage, why)
	}
	cands, err := a.candidates(ctx, need)
	if err != nil {
		return nil, err
	}
	// Configuration order, so that a tie goes to the first backend.
	a.mu.Lock()
	pos := map[string]int{}
	for i, n := range a.order {
		pos[n] = i
	}
	a.mu.Unlock()
	sort.Slice(cands, func(i, j int) bool { return pos[cands[i].name] < pos[cands[j].name] })
	next := 0
	for len(answers) < 2 && next < len(cands) {
		ask(cands[next])
		next++
	}
	if len(answers) == 0 {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, errNoBackend(what)
	}
	if len(answers) == 2 && answers[0].key != answers[1].key {
		for next < len(cands) && len(answers) < 3 {
			ask(cands[next])
			next++
		}
	}
	count := map[string]int{}
	for _, an := range answers {
		count[an.key]++
	}
	win := answers[0]
	for _, an := range answers {
		if count[an.key] > count[win.key] {
			win = an
		}
	}
	for _, an := range answers {
		if an.key != win.key {
			// A wrong answer is evidence whatever the client does next.
			a.degradeDiff(an.m, fmt.Sprintf("%s answered differently from %s", what, win.m.name))
		}
	}
	return win.v, win.err
}

// LoadSerial implements zodb.Loader.
func (a *Array) LoadSerial(ctx context.Context, oid zodb.OID, serial zodb.TID) ([]byte, error) {
	need := a.need(serial.Next())
	if a.useCache(need) {
		if data, ok := a.cache.LoadSerial(oid, serial); ok {
			return data, nil
		}
	}
	var data []byte
	err := a.read(ctx, "loadSerial", need, func(ctx context.Context, st zodb.Storage) error {
		var err error
		data, err = st.LoadSerial(ctx, oid, serial)
		return err
	})
	return data, err
}

// History implements zodb.Historian.
func (a *Array) History(ctx context.Context, oid zodb.OID, size int) ([]zodb.HistoryEntry, error) {
	var out []zodb.HistoryEntry
	err := a.read(ctx, "history", a.need(zodb.MaxTID), func(ctx context.Context, st zodb.Storage) error {
		var err error
		out, err = st.History(ctx, oid, size)
		return err
	})
	return out, err
}

// UndoLog implements zodb.Undoer.
func (a *Array) UndoLog(ctx context.Context, first, last int, filter func(*zodb.UndoEntry) bool) ([]zodb.UndoEntry, error) {
	var out []zodb.UndoEntry
	err := a.read(ctx, "undoLog", a.need(zodb.MaxTID), func(ctx context.Context, st zodb.Storage) error {
		var err error
		out, err = st.UndoLog(ctx, first, last, filter)
		return err
	})
	return out, err
}

// RecordIterNext implements zodb.Iterator.
func (a *Array) RecordIterNext(ctx context.Context, from zodb.OID) (zodb.CurrentRecord, zodb.OID, bool, error) {
	var rec zodb.CurrentRecord
	var next zodb.OID
	var more bool
	err := a.read(ctx, "record_iternext", a.need(zodb.MaxTID), func(ctx context.Context, st zodb.Storage) error {
		var err error
		rec, next, more, err = st.RecordIterNext(ctx, from)
		return err
	})
	return rec, next, more, err
}

// Iterate implements zodb.Iterator with one optimal backend's iterator.
func (a *Array) Iterate(ctx context.Context, start, stop zodb.TID) (zodb.TransactionIterator, error) {
	var it zodb.TransactionIterator
	err := a.read(ctx, "iterator", a.need(zodb.MaxTID), func(ctx context.Context, st zodb.Storage) error {
		var err error
		it, err = st.Iterate(ctx, start, stop)
		return err
	})
	return it, err
}

// Info implements zodb.Storage with an optimal backend's numbers.
func (a *Array) Info(ctx context.Context) (zodb.StorageInfo, error) {
	var info zodb.StorageInfo
	err := a.read(ctx, "info", zodb.ZeroTID, func(ctx context.Context, st zodb.Storage) error {
		var err error
		info, err = st.Info(ctx)
		return err
	})
	info.Name = a.cfg.Storage
	return info, err
}

// Pack implements zodb.Packer: every optimal backend packs to the same
// time, one array pack at a time, never while a recovery runs (recovery
// copies history that pack changes). A backend that fails to pack (no
// answer) is degraded; one that answers with an error (FileStorage's
// "Already packing", say) is not: its data is intact, it just did not
// pack, and the error goes back to the caller. Each backend that packed
// records the pack time in its row, so that a backend that missed the
// pack can still be recovered in place (recovery packs it likewise).
func (a *Array) Pack(ctx context.Context, packTID zodb.TID) error {
	if ok, why := a.Ready(); !ok {
		return zodb.NewStorageError("storage %s is not ready: %s", a.cfg.Storage, why)
	}
	a.mu.Lock()
	switch {
	case a.packing:
		a.mu.Unlock()
		return zodb.NewStorageError("Already packing")
	case a.recoveringLocked():
		a.mu.Unlock()
		return zodb.NewStorageError("pack refused: a recovery is running (it copies history that pack would change)")
	}
	a.packing = true
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.packing = false
		a.mu.Unlock()
	}()
	bctx := context.WithoutCancel(ctx)
	members, err := a.usable(bctx)
	if err != nil {
		return err
	}
	packTID, lease, err := a.packTime(ctx, packTID)
	if err != nil {
		return err
	}
	if lease != nil {
		defer lease.Release()
	}
	a.log.Info("packing", "pack_tid", packTID, "backends", names(members), "commits_held", lease != nil)
	errs := make([]error, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = m.st.Pack(bctx, packTID)
		}()
	}
	wg.Wait()
	// A pack removes revisions, and with GC whole objects, that the
	// cache may hold (a load that started during the pack cannot fill
	// it any more: Clear starts a new epoch).
	a.cache.Clear()
	var first error
	for i, m := range members {
		err := errs[i]
		switch {
		case err == nil:
			a.recordPack(m, packTID)
		case isFailure(err):
			if first == nil {
				first = err
			}
			a.degrade(m, fmt.Sprintf("pack to %s failed: %v", packTID, err))
		default:
			if first == nil {
				first = err
			}
			a.log.Warn("backend refused to pack", "backend", m.name, "pack_tid", packTID, "error", err)
		}
	}
	return first
}

// packTime chooses the time every backend packs to. It must be the same
// effective point on every backend: a backend packs to at most its own
// last transaction, and ZEO carries the pack time as a float (precise to
// about a quarter of a microsecond, coarser than tids), so a time close
// to a commit that some backends have and others not yet would pack them
// differently. Holding the commit lease (no commit in flight), the time
// is taken from the clock, at least a millisecond after the array's last
// transaction, and the lease is kept a little longer, so that every later
// commit lies well after it and every earlier one well before. When the
// clock is behind the array's tids (tids granted ahead of it), that
// margin cannot be had: the lease is then held for the whole pack, and
// returned to the caller to release.
func (a *Array) packTime(ctx context.Context, requested zodb.TID) (zodb.TID, *Lease, error) {
	const margin = time.Millisecond
	lease, err := a.acquireLease(ctx, zodb.ZeroTID)
	if err != nil {
		return zodb.TID{}, nil, err
	}
	a.setHolder(lease.TID, "pack")
	defer a.clearHolder(lease.TID)
	for wait := 0; ; wait++ {
		now := time.Now()
		a.evMu.Lock()
		last := a.announced
		a.evMu.Unlock()
		if last.Time().Add(margin).Before(now) {
			p := zodb.TIDFromTime(now.Add(-margin / 2))
			if requested.Less(p) {
				p = requested
			}
			time.Sleep(margin)
			lease.Release()
			return p, nil, nil
		}
		if wait >= 50 {
			// The clock is behind: pack under the lease.
			p := last.Next()
			if requested.Less(p) {
				p = requested
			}
			return p, lease, nil
		}
		time.Sleep(margin)
	}
}

// recordPack notes in m's row that it was packed to packTID.
func (a *Array) recordPack(m *member, packTID zodb.TID) {
	for attempt := 0; attempt < 3; attempt++ {
		row, ok := a.cfg.Coord.Table(a.cfg.Storage)[m.name]
		if !ok || !row.PackedTo.Less(packTID) {
			return
		}
		next := row
		next.PackedTo = packTID
		next.Since = time.Time{}
		if row.State == Optimal {
			next.Since = row.Since
		}
		ctx, cancel := context.WithTimeout(context.Background(), a.cfg.StateTimeout)
		_, err := a.cfg.Coord.Update(ctx, a.cfg.Storage, Change{Backend: m.name, Version: row.Version, To: next})
		cancel()
		if err == nil || !errors.Is(err, ErrStale) {
			if err != nil {
				a.log.Warn("pack time not recorded", "backend", m.name, "error", err)
			}
			return
		}
	}
}
