package boltstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/txnplan"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Options configure Open.
type Options struct {
	// Name is the storage's name, recorded in a new file and reported by
	// Info (default: the file name).
	Name string
	// ReadOnly opens the file read-only (shared lock); writes fail with
	// ReadOnlyError.
	ReadOnly bool
	// LockTimeout is how long to wait for another process's lock on the
	// file (default 2 s) before failing with ErrLocked.
	LockTimeout time.Duration
	// OIDBlock is how many oids are reserved (persisted) at once
	// (default 1024).
	OIDBlock uint64
	// NoPackGC makes pack keep unreachable objects (FileStorage's
	// pack-gc false).
	NoPackGC bool
	// NoSync skips fsync; only for tests that do not test durability.
	NoSync bool
	// NoJournal writes every group commit straight into bbolt (two
	// fsyncs) instead of the journal (one); see journal.go.
	NoJournal bool
	Logger    hclog.Logger
	// Now is the clock for new tids (default time.Now).
	Now func() time.Time
}

// ErrLocked reports a data file locked by another process.
var ErrLocked = errors.New("boltstore: the data file is locked by another process")

// Store is a bbolt-backed zodb.Storage.
type Store struct {
	db   *bolt.DB
	path string
	opts Options
	log  hclog.Logger

	commit *txnplan.Lock // held from Vote to Finish/Abort, and by pack's final phase
	// maint is held by a whole Pack and a whole Truncate: a pack computes
	// reachability before it takes the commit lock, and a truncation in
	// between would leave it collecting by a history that is gone.
	maint chan struct{}

	// Group commit (groupcommit.go).
	pmu      sync.Mutex    // guards the fields below
	pending  []*pendingTxn // finished, not yet durable, in tid order
	broken   error         // a write failed: every write fails
	stopping bool          // Close has begun: Finish refuses
	wake     chan struct{} // tells the committer there is work
	stop     chan struct{} // closed by Close, after the queue drained
	// committerDone is closed when the committer has returned.
	committerDone chan struct{}
	written       WriteStats // guarded by pmu
	// The journal (journal.go): nil when read-only or NoJournal. Only the
	// committer goroutine appends to it and applies it.
	j *journal
	// journaled are durable in the journal, not yet in bbolt (tid order);
	// guarded by pmu, like the fields up to progress.
	journaled      []*pendingTxn
	journaledBytes int
	journaledSince time.Time
	applyWanted    bool          // a read or drain waits for an apply
	applyErr       error         // an apply failed: reads fail too
	progress       chan struct{} // closed after each step of the committer
	// afterPackWait, when set (tests), runs in Pack after it waited for
	// the journal and before it reads bbolt's last tid.
	afterPackWait func()
	// holdApply (tests) applies the journal only when a read or drain
	// asks (guarded by pmu).
	holdApply bool
	// hasJournaled: journaled is not empty (read without pmu by reads).
	hasJournaled atomic.Bool
	// beforeWrite, when set (tests), runs before each group write; an
	// error it returns fails the write.
	beforeWrite func() error
	// beforeTrashRemoval, when set (tests), runs before pack's dropped
	// blob files are removed; an error stops there (a crash).
	beforeTrashRemoval func() error
	// staged are the blobs staged by voted transactions (guarded by pmu).
	staged map[*zodb.Transaction][]stagedBlob

	oidMu    sync.Mutex // orders the writes that persist the oid limit
	mu       sync.Mutex // guards the fields below
	last     zodb.TID
	oidNext  uint64 // next oid to hand out
	oidLimit uint64 // oids below this are reserved on disk
	closed   bool

	zodb.Subscribers
}

var _ zodb.Storage = (*Store)(nil)

// Open opens (creating if needed) the storage file at path.
func Open(path string, opts Options) (*Store, error) {
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = 2 * time.Second
	}
	if opts.OIDBlock == 0 {
		opts.OIDBlock = 1024
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.ReadOnly {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("boltstore: %s: %w", path, err)
		}
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout: opts.LockTimeout, ReadOnly: opts.ReadOnly, NoSync: opts.NoSync,
		// A large initial mapping (address space only) means the file can
		// grow for a long time without a remap, which would have to wait
		// for every open read transaction.
		InitialMmapSize: 1 << 30,
		FreelistType:    bolt.FreelistMapType,
	})
	if err != nil {
		switch {
		case errors.Is(err, bolterrors.ErrTimeout):
			return nil, fmt.Errorf("%w: %s (is another zeoraid backend using it?)", ErrLocked, path)
		case errors.Is(err, bolterrors.ErrInvalid), errors.Is(err, bolterrors.ErrVersionMismatch), errors.Is(err, bolterrors.ErrChecksum):
			return nil, fmt.Errorf("boltstore: %s is not a zeoraid data file or is corrupt: %w", path, err)
		}
		return nil, fmt.Errorf("boltstore: opening %s: %w", path, err)
	}
	s := &Store{db: db, path: path, opts: opts, log: opts.Logger, commit: txnplan.NewLock(), maint: make(chan struct{}, 1),
		wake: make(chan struct{}, 1), stop: make(chan struct{}), committerDone: make(chan struct{}),
		progress: make(chan struct{}), staged: map[*zodb.Transaction][]stagedBlob{}}
	if err := s.init(); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.openJournal(); err != nil {
		db.Close()
		return nil, err
	}
	if !opts.ReadOnly {
		if err := s.recoverBlobs(); err != nil {
			db.Close()
			s.closeJournal()
			return nil, fmt.Errorf("boltstore: %s: recovering blobs in %s: %w", path, s.BlobDir(), err)
		}
	}
	go s.committer()
	return s, nil
}

// init checks (or writes) the format and loads the counters.
func (s *Store) init() error {
	check := func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			return fmt.Errorf("boltstore: %s is a bbolt file but not a zeoraid data file (no meta bucket)", s.path)
		}
		if f := meta.Get(keyFormat); string(f) != formatMagic {
			return fmt.Errorf("boltstore: %s is a bbolt file but not a zeoraid data file (format %q)", s.path, f)
		}
		if v := u64(meta.Get(keyVersion)); v != formatVersion {
			return fmt.Errorf("boltstore: %s has format version %d; this zeoraid reads version %d", s.path, v, formatVersion)
		}
		for _, b := range [][]byte{bucketRecords, bucketTxns, bucketCurrent} {
			if tx.Bucket(b) == nil {
				return fmt.Errorf("boltstore: %s is corrupt: bucket %s missing", s.path, b)
			}
		}
		s.last = zodb.TID(pad8(meta.Get(keyLastTID)))
		// Oid 0 is the root: new oids start at 1, like FileStorage's.
		s.oidLimit = max(u64(meta.Get(keyNextOID)), 1)
		s.oidNext = s.oidLimit
		if s.opts.Name == "" {
			s.opts.Name = string(meta.Get(keyName))
		}
		return nil
	}
	if s.opts.ReadOnly {
		return s.db.View(check)
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketMeta) == nil {
			if !emptyDB(tx) {
				return fmt.Errorf("boltstore: %s is a bbolt file of another application", s.path)
			}
			meta, err := tx.CreateBucket(bucketMeta)
			if err != nil {
				return err
			}
			name := s.opts.Name
			if name == "" {
				name = s.path
			}
			for k, v := range map[string][]byte{
				string(keyFormat): []byte(formatMagic), string(keyVersion): b64(formatVersion),
				string(keyName): []byte(name), string(keyLastTID): make([]byte, 8), string(keyNextOID): b64(0),
				string(keyLength): b64(0), string(keySize): b64(0), string(keyPackTID): make([]byte, 8),
			} {
				if err := meta.Put([]byte(k), v); err != nil {
					return err
				}
			}
			for _, b := range [][]byte{bucketRecords, bucketTxns, bucketCurrent} {
				if _, err := tx.CreateBucket(b); err != nil {
					return err
				}
			}
		}
		for _, b := range [][]byte{bucketBlobs, bucketBlobTrash} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return check(tx)
	})
}

func emptyDB(tx *bolt.Tx) bool {
	empty := true
	tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil })
	return empty
}

func pad8(b []byte) [8]byte {
	var out [8]byte
	copy(out[:], b)
	return out
}

func (s *Store) checkOpen() error {
	if s.closed {
		return zodb.NewStorageError("storage %s is closed", s.opts.Name)
	}
	return nil
}

// Close implements zodb.Storage.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	// Transactions already finished are written; none is queued after.
	s.pmu.Lock()
	s.stopping = true
	s.pmu.Unlock()
	s.drain()
	close(s.stop)
	<-s.committerDone
	s.closeJournal()
	return s.db.Close()
}

// Path is the data file.
func (s *Store) Path() string { return s.path }

// LastTransaction implements zodb.Loader.
func (s *Store) LastTransaction(ctx context.Context) (zodb.TID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last, s.checkOpen()
}

// --- reads ------------------------------------------------------------------

// revisionBefore finds oid's newest revision below before, and the tid of
// the one after it (ZeroTID if none). exists reports whether oid has any
// revision at all.
func revisionBefore(tx *bolt.Tx, oid zodb.OID, before zodb.TID) (rec zodb.DataRecord, found bool, next zodb.TID, exists bool, err error) {
	c := tx.Bucket(bucketRecords).Cursor()
	k, _ := c.Seek(recordKey(oid, before))
	if k != nil && bytes.Equal(k[:8], oid[:]) {
		_, next = splitRecordKey(k)
		exists = true
		k, _ = c.Prev()
	} else if k == nil {
		k, _ = c.Last()
	} else {
		k, _ = c.Prev()
	}
	if k == nil || !bytes.Equal(k[:8], oid[:]) {
		return rec, false, next, exists, nil
	}
	_, tid := splitRecordKey(k)
	v := tx.Bucket(bucketRecords).Get(k)
	rec, err = decodeRecord(oid, tid, v)
	return rec, err == nil, next, true, err
}

// LoadBefore implements zodb.Loader.
func (s *Store) LoadBefore(ctx context.Context, oid zodb.OID, before zodb.TID) (*zodb.Revision, error) {
	if err := s.waitApplied(ctx); err != nil {
		return nil, err
	}
	var rev *zodb.Revision
	err := s.db.View(func(tx *bolt.Tx) error {
		rec, found, next, exists, err := revisionBefore(tx, oid, before)
		if err != nil {
			return err
		}
		if !found {
			if !exists {
				return &zodb.POSKeyError{OID: oid}
			}
			return nil
		}
		if rec.NoData {
			return &zodb.POSKeyError{OID: oid}
		}
		rev = &zodb.Revision{Data: rec.Data, TID: rec.TID, End: next}
		return nil
	})
	return rev, s.wrap(err)
}

// wrap turns bbolt's closed-database error into a storage error.
func (s *Store) wrap(err error) error {
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return zodb.NewStorageError("storage %s is closed", s.opts.Name)
	}
	return err
}

// LoadSerial implements zodb.Loader.
func (s *Store) LoadSerial(ctx context.Context, oid zodb.OID, serial zodb.TID) ([]byte, error) {
	if err := s.waitApplied(ctx); err != nil {
		return nil, err
	}
	var data []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketRecords).Get(recordKey(oid, serial))
		if v == nil {
			return &zodb.POSKeyError{OID: oid}
		}
		rec, err := decodeRecord(oid, serial, v)
		if err != nil {
			return err
		}
		if rec.NoData {
			return &zodb.POSKeyError{OID: oid}
		}
		data = rec.Data
		return nil
	})
	return data, s.wrap(err)
}

// History implements zodb.Historian.
func (s *Store) History(ctx context.Context, oid zodb.OID, size int) ([]zodb.HistoryEntry, error) {
	if err := s.waitApplied(ctx); err != nil {
		return nil, err
	}
	var out []zodb.HistoryEntry
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketRecords).Cursor()
		txns := tx.Bucket(bucketTxns)
		k, _ := c.Seek(recordKey(oid, zodb.EndOfTime))
		if k == nil {
			k, _ = c.Last()
		} else if !bytes.Equal(k[:8], oid[:]) || !bytes.Equal(k[8:], zodb.EndOfTime[:]) {
			k, _ = c.Prev()
		}
		found := false
		for ; k != nil && bytes.Equal(k[:8], oid[:]) && len(out) < size; k, _ = c.Prev() {
			found = true
			_, tid := splitRecordKey(k)
			rec, err := decodeRecord(oid, tid, tx.Bucket(bucketRecords).Get(k))
			if err != nil {
				return err
			}
			e := zodb.HistoryEntry{TID: tid, Size: len(rec.Data)}
			if h, err := decodeTxn(txns.Get(tid[:])); err == nil {
				e.Meta = h.meta
			}
			out = append(out, e)
		}
		if !found && size > 0 {
			return &zodb.POSKeyError{OID: oid}
		}
		return nil
	})
	return out, s.wrap(err)
}

// Info implements zodb.Storage.
func (s *Store) Info(ctx context.Context) (zodb.StorageInfo, error) {
	info := zodb.StorageInfo{Name: s.opts.Name, SupportsUndo: true, ReadOnly: s.opts.ReadOnly}
	// The ZEO server asks after every commit: no wait for the journal to
	// be applied. bbolt's counters, plus what the journaled transactions
	// it does not have yet add; read under pmu, so that an apply that has
	// written bbolt but not yet dropped its transactions from journaled
	// is not counted twice (its tids are at or below bbolt's last).
	s.pmu.Lock()
	defer s.pmu.Unlock()
	var applied zodb.TID
	err := s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		info.Length = int64(u64(meta.Get(keyLength)))
		info.Size = int64(u64(meta.Get(keySize)))
		applied = zodb.TID(pad8(meta.Get(keyLastTID)))
		return nil
	})
	for _, pt := range s.journaled {
		if applied.Less(pt.plan.TID) {
			info.Length += pt.length
			info.Size += pt.size
		}
	}
	return info, s.wrap(err)
}

// view is txnplan's view of a read transaction.
type view struct{ tx *bolt.Tx }

func (v view) Current(oid zodb.OID) (txnplan.Rev, bool, error) {
	return v.Before(oid, zodb.EndOfTime)
}

func (v view) Before(oid zodb.OID, tid zodb.TID) (txnplan.Rev, bool, error) {
	rec, found, _, _, err := revisionBefore(v.tx, oid, tid)
	if err != nil || !found {
		return txnplan.Rev{}, false, err
	}
	return txnplan.Rev{TID: rec.TID, Data: rec.Data, NoData: rec.NoData}, true, nil
}

func (v view) Records(tid zodb.TID) ([]zodb.DataRecord, bool, error) {
	hv := v.tx.Bucket(bucketTxns).Get(tid[:])
	if hv == nil {
		return nil, false, nil
	}
	h, err := decodeTxn(hv)
	if err != nil {
		return nil, false, err
	}
	recs := make([]zodb.DataRecord, 0, len(h.oids))
	for _, oid := range h.oids {
		rv := v.tx.Bucket(bucketRecords).Get(recordKey(oid, tid))
		if rv == nil {
			continue // pruned by pack
		}
		r, err := decodeRecord(oid, tid, rv)
		if err != nil {
			return nil, false, err
		}
		recs = append(recs, r)
	}
	return recs, true, nil
}
