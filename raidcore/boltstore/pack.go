package boltstore

import (
	"bytes"
	"context"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/pickle"
	bolt "go.etcd.io/bbolt"
)

// packBatch bounds the work of one bbolt transaction during pack.
const packBatch = 4096

// Pack implements zodb.Packer. It keeps every revision written at or after
// packTID and, for each object, the revision current at packTID (unless
// that is a deletion); older revisions go. With garbage collection (the
// default) it also removes the pre-pack revisions of objects that are not
// reachable from the root (oid 0) at packTID, nor from any record written
// at or after it, following references like ZODB's referencesf. A record
// whose references cannot be read makes pack skip collection (keeping
// everything reachable is the safe side) and log why.
//
// Reads are never blocked (bbolt snapshots). The reachability scan runs
// without the commit lock; the lock is taken only to take in what was
// committed meanwhile and to delete.
func (s *Store) Pack(ctx context.Context, packTID zodb.TID) error {
	if s.opts.ReadOnly {
		return zodb.NewReadOnlyError()
	}
	release, err := s.maintenance(ctx)
	if err != nil {
		return err
	}
	defer release()
	start := time.Now()
	// The scan reads bbolt: what the journal holds goes there first, and
	// last is bbolt's last tid, not the storage's: a transaction
	// acknowledged meanwhile may be only in the journal, and the second
	// scan (after drain) must take it in as committed after last.
	if err := s.waitApplied(ctx); err != nil {
		return err
	}
	if s.afterPackWait != nil {
		s.afterPackWait()
	}
	var last zodb.TID
	if err := s.db.View(func(tx *bolt.Tx) error {
		last = zodb.TID(pad8(tx.Bucket(bucketMeta).Get(keyLastTID)))
		return nil
	}); err != nil {
		return s.wrap(err)
	}
	// Commits from now on get tids above last; packing at most up to
	// last+1 makes all of them "after the pack time".
	if last.Next().Less(packTID) {
		packTID = last.Next()
	}
	s.log.Info("pack started", "storage", s.opts.Name, "pack_tid", packTID)
	gc := !s.opts.NoPackGC
	var reachable map[zodb.OID]bool
	if gc {
		var err error
		reachable, err = s.reachable(ctx, packTID, zodb.ZeroTID, nil)
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			s.log.Warn("pack: cannot follow references; packing without garbage collection", "error", err)
			gc = false
		}
	}
	if err := s.commit.Acquire(ctx); err != nil {
		return err
	}
	defer s.commit.Release()
	// Transactions finished before the lock was ours are written first.
	s.drain()
	if gc {
		// Take in what was committed during the scan.
		var err error
		if reachable, err = s.reachable(ctx, packTID, last, reachable); err != nil {
			s.log.Warn("pack: cannot follow references; packing without garbage collection", "error", err)
			gc = false
		}
	}
	if !gc {
		reachable = nil
	}
	stats, err := s.prune(packTID, reachable)
	if err != nil {
		return s.wrap(err)
	}
	// The dropped revisions' blob files go once their records are gone.
	if _, err := s.emptyBlobTrash(); err != nil {
		return zodb.NewStorageError("storage %s: pack removed records but not all of their blob files (the next pack or start removes them): %v", s.opts.Name, err)
	}
	s.log.Info("pack complete", "storage", s.opts.Name, "pack_tid", packTID, "revisions_removed", stats.revisions,
		"objects_removed", stats.objects, "bytes_removed", stats.bytes, "gc", gc, "duration", time.Since(start))
	return nil
}

// maintenance waits (within ctx) until no other Pack or Truncate runs.
func (s *Store) maintenance(ctx context.Context) (release func(), err error) {
	select {
	case s.maint <- struct{}{}:
		return func() { <-s.maint }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// reachable extends seen (nil: start anew from the root) with every oid
// reachable from the root at packTID and from every record of a
// transaction with tid >= max(packTID, after+1), following each object's
// state as of packTID.
func (s *Store) reachable(ctx context.Context, packTID, after zodb.TID, seen map[zodb.OID]bool) (map[zodb.OID]bool, error) {
	var queue []zodb.OID
	mark := func(oid zodb.OID) {
		if !seen[oid] {
			seen[oid] = true
			queue = append(queue, oid)
		}
	}
	if seen == nil {
		seen = map[zodb.OID]bool{}
		mark(zodb.OID{})
	}
	from := packTID
	if !after.IsZero() && from.Less(after.Next()) {
		from = after.Next()
	}
	// Roots from the future: references in records written at or after
	// the pack time.
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketTxns).Cursor()
		for k, v := c.Seek(from[:]); k != nil; k, v = c.Next() {
			rec, err := readTxn(tx, zodb.TID(pad8(k)), v)
			if err != nil {
				return err
			}
			for _, r := range rec.Records {
				mark(r.OID)
				if r.NoData {
					continue
				}
				refs, err := pickle.References(r.Data)
				if err != nil {
					return err
				}
				for _, o := range refs {
					mark(o)
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Closure over the states as of packTID, in batches of short reads.
	for len(queue) > 0 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		batch := queue[:min(len(queue), packBatch)]
		queue = queue[len(batch):]
		var found []zodb.OID
		err := s.db.View(func(tx *bolt.Tx) error {
			for _, oid := range batch {
				rec, ok, _, _, err := revisionBefore(tx, oid, packTID)
				if err != nil {
					return err
				}
				if !ok || rec.NoData {
					continue
				}
				refs, err := pickle.References(rec.Data)
				if err != nil {
					return err
				}
				found = append(found, refs...)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		for _, o := range found {
			mark(o)
		}
	}
	return seen, nil
}

type pruneStats struct {
	revisions, objects int
	bytes              int64
}

// prune deletes what pack drops, in batches; the commit lock is held.
// reachable nil means no garbage collection.
func (s *Store) prune(packTID zodb.TID, reachable map[zodb.OID]bool) (pruneStats, error) {
	var st pruneStats
	touched := map[zodb.TID]bool{} // transactions that lost records
	var cursor zodb.OID
	for more := true; more; {
		err := s.db.Update(func(tx *bolt.Tx) error {
			records, current, meta := tx.Bucket(bucketRecords), tx.Bucket(bucketCurrent), tx.Bucket(bucketMeta)
			size := int64(u64(meta.Get(keySize)))
			cc := current.Cursor()
			n := 0
			k, _ := cc.Seek(cursor[:])
			var dropCurrent [][]byte
			for ; k != nil && n < packBatch; k, _ = cc.Next() {
				oid := zodb.OID(pad8(k))
				n++
				// This object's revisions before packTID, oldest first.
				var old [][]byte
				keep := -1 // index in old of the revision current at packTID
				rc := records.Cursor()
				var liveNow bool
				for rk, rv := rc.Seek(recordKey(oid, zodb.ZeroTID)); rk != nil && sameOID(rk, oid); rk, rv = rc.Next() {
					_, tid := splitRecordKey(rk)
					if !tid.Less(packTID) {
						break
					}
					old = append(old, append([]byte{}, rk...))
					keep = len(old) - 1
					liveNow = len(rv) > 0 && rv[0]&flagNoData == 0
				}
				if keep >= 0 && !liveNow {
					keep = -1 // a deletion current at packTID goes too
				}
				if reachable != nil && !reachable[oid] {
					keep = -1
				}
				for i, rk := range old {
					if i == keep {
						continue
					}
					rv := records.Get(rk)
					if len(rv) > 9 {
						size -= int64(len(rv) - 9)
						st.bytes += int64(len(rv) - 9)
					}
					if err := records.Delete(rk); err != nil {
						return err
					}
					if err := trashBlob(tx, rk); err != nil {
						return err
					}
					_, tid := splitRecordKey(rk)
					touched[tid] = true
					st.revisions++
				}
				// Does anything of this object remain?
				if rk, _ := rc.Seek(recordKey(oid, zodb.ZeroTID)); rk == nil || !sameOID(rk, oid) {
					dropCurrent = append(dropCurrent, append([]byte{}, k...))
					st.objects++
				}
			}
			more = k != nil
			if k != nil {
				cursor = zodb.OID(pad8(k))
			}
			for _, dk := range dropCurrent {
				if err := current.Delete(dk); err != nil {
					return err
				}
			}
			return meta.Put(keySize, b64(uint64(max(size, 0))))
		})
		if err != nil {
			return st, err
		}
	}
	// Rewrite the headers of transactions that lost records; drop empty
	// ones; the rest are marked packed.
	var tids []zodb.TID
	for tid := range touched {
		tids = append(tids, tid)
	}
	for len(tids) > 0 {
		batch := tids[:min(len(tids), packBatch)]
		tids = tids[len(batch):]
		err := s.db.Update(func(tx *bolt.Tx) error {
			txns, records := tx.Bucket(bucketTxns), tx.Bucket(bucketRecords)
			for _, tid := range batch {
				hv := txns.Get(tid[:])
				if hv == nil {
					continue
				}
				h, err := decodeTxn(hv)
				if err != nil {
					return err
				}
				var left []zodb.OID
				for _, oid := range h.oids {
					if records.Get(recordKey(oid, tid)) != nil {
						left = append(left, oid)
					}
				}
				if len(left) == 0 {
					if err := txns.Delete(tid[:]); err != nil {
						return err
					}
					continue
				}
				h.oids, h.status = left, zodb.StatusPacked
				if err := txns.Put(tid[:], encodeTxn(h)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return st, err
		}
	}
	// Transactions before packTID that lost nothing are packed too: undo
	// stops at the pack time, as in FileStorage. The live object count is
	// recounted.
	err := s.db.Update(func(tx *bolt.Tx) error {
		txns := tx.Bucket(bucketTxns)
		c := txns.Cursor()
		for k, v := c.First(); k != nil && bytes.Compare(k, packTID[:]) < 0; k, v = c.Next() {
			if len(v) > 0 && v[0] != zodb.StatusPacked {
				nv := append([]byte{zodb.StatusPacked}, v[1:]...)
				if err := txns.Put(append([]byte{}, k...), nv); err != nil {
					return err
				}
			}
		}
		meta := tx.Bucket(bucketMeta)
		if err := meta.Put(keyPackTID, append([]byte{}, packTID[:]...)); err != nil {
			return err
		}
		return meta.Put(keyLength, b64(uint64(countLive(tx))))
	})
	return st, err
}

// countLive counts objects whose current revision has data.
func countLive(tx *bolt.Tx) int64 {
	var n int64
	records := tx.Bucket(bucketRecords)
	tx.Bucket(bucketCurrent).ForEach(func(k, v []byte) error {
		rv := records.Get(recordKey(zodb.OID(pad8(k)), zodb.TID(pad8(v))))
		if len(rv) > 0 && rv[0]&flagNoData == 0 {
			n++
		}
		return nil
	})
	return n
}
