package zodb

import (
	"context"
	"io"
	"math"
)

// EndOfTime is the largest tid; pass it as the upper bound of Iterate for
// "no bound".
var EndOfTime = TIDFromUint64(math.MaxUint64)

// Revision is one stored revision of an object as returned by LoadBefore.
type Revision struct {
	Data []byte
	// TID is the transaction that wrote this revision.
	TID TID
	// End is the tid of the next revision, or ZeroTID if this revision is
	// current. Returning ZeroTID for a revision that is not current is the
	// data-corruption bug ZEO clients cannot recover from.
	End TID
}

// HistoryEntry describes one revision of an object, newest first.
type HistoryEntry struct {
	TID  TID
	Meta TxnMeta
	// Size is the length of the record's data.
	Size int
}

// UndoEntry describes one undoable transaction.
type UndoEntry struct {
	// ID is the undo id to pass back in an OpUndo: FileStorage's base64 of
	// the tid, which is the same on every storage holding the same tids.
	ID   []byte
	TID  TID
	Meta TxnMeta
	Size int
}

// DataRecord is one record of a transaction, as iterated.
type DataRecord struct {
	OID  OID
	TID  TID
	Data []byte
	// NoData marks a record without data (a deletion or an undone
	// creation).
	NoData bool
	// DataTxn is a hint that identical data was stored by that earlier
	// transaction, or ZeroTID.
	DataTxn TID
	// Blob, in a transaction plan (txnplan), is the blob file stored with
	// the record; iterated records leave it nil (blobs are read with
	// BlobStorage.OpenBlob).
	Blob *Blob
}

// LastRecords returns recs without the records that a later record of the
// same oid in the same transaction supersedes (FileStorage keeps both
// when a transaction stores an object twice, as ZEO's server does for
// every blob: storea, then storeBlob; loads see the last). Order is kept.
// recs is returned as is when no oid repeats.
func LastRecords(recs []DataRecord) []DataRecord {
	if len(recs) < 2 {
		return recs
	}
	last := make(map[OID]int, len(recs))
	for i, r := range recs {
		last[r.OID] = i
	}
	if len(last) == len(recs) {
		return recs
	}
	out := make([]DataRecord, 0, len(last))
	for i, r := range recs {
		if last[r.OID] == i {
			out = append(out, r)
		}
	}
	return out
}

// TransactionRecord is one transaction with its records, as iterated.
type TransactionRecord struct {
	TID     TID
	Status  byte
	Meta    TxnMeta
	Records []DataRecord
}

// CurrentRecord is one current object record, for record_iternext.
type CurrentRecord struct {
	OID  OID
	TID  TID
	Data []byte
}

// StorageInfo is what a storage reports about itself (ZEO get_info).
type StorageInfo struct {
	Name string
	// Length is the approximate number of objects, Size the approximate
	// size in bytes.
	Length, Size int64
	SupportsUndo bool
	ReadOnly     bool
}

// Loader reads objects.
type Loader interface {
	// LoadBefore returns the revision of oid with the greatest tid strictly
	// below before, with the tid of the following revision (ZeroTID if it
	// is current). It returns (nil, nil) when the object exists but has no
	// revision before that tid, and a *POSKeyError when oid is unknown or
	// the chosen revision is a deletion or an undone creation.
	LoadBefore(ctx context.Context, oid OID, before TID) (*Revision, error)
	// LoadSerial returns the data of exactly that revision, or a
	// *POSKeyError.
	LoadSerial(ctx context.Context, oid OID, serial TID) ([]byte, error)
	// LastTransaction returns the last committed tid, ZeroTID if none.
	LastTransaction(ctx context.Context) (TID, error)
}

// Committer runs the storage half of two-phase commit.
type Committer interface {
	// NewOIDs returns n oids that were never handed out before.
	NewOIDs(ctx context.Context, n int) ([]OID, error)
	// Vote takes the storage's commit lock (waiting for it), applies the
	// transaction's operations in order and votes. On success the lock is
	// held until Finish or Abort, and Finish will not fail for reasons of
	// the transaction's content. On error the transaction is aborted and the
	// lock released.
	Vote(ctx context.Context, txn *Transaction) (VoteResult, error)
	// Finish commits a voted transaction and returns its tid. Subscribers
	// get the CommitEvent before Finish returns.
	Finish(ctx context.Context, txn *Transaction) (TID, error)
	// Abort forgets the transaction and releases the lock. Aborting a
	// transaction that is not current is a no-op.
	Abort(ctx context.Context, txn *Transaction) error
}

// Historian answers history questions.
type Historian interface {
	// History returns up to size revisions of oid, newest first, or a
	// *POSKeyError.
	History(ctx context.Context, oid OID, size int) ([]HistoryEntry, error)
}

// Undoer lists undoable transactions. Undoing itself is an OpUndo.
type Undoer interface {
	// UndoLog returns transaction descriptions newest first, skipping the
	// first `first` that match filter (nil matches all); last >= 0 is the
	// index to stop before, last < 0 means at most -last entries.
	UndoLog(ctx context.Context, first, last int, filter func(*UndoEntry) bool) ([]UndoEntry, error)
}

// Iterator walks history.
type Iterator interface {
	// Iterate returns the transactions with start <= tid <= stop in tid
	// order (stop EndOfTime: no bound).
	Iterate(ctx context.Context, start, stop TID) (TransactionIterator, error)
	// RecordIterNext returns the current record with the smallest oid >=
	// from, and the oid of the one after it (more false at the end).
	RecordIterNext(ctx context.Context, from OID) (rec CurrentRecord, next OID, more bool, err error)
}

// EarlyFinisher is implemented by storages that let the next transaction
// vote before a finishing one is durable (group commit): FinishEarly is
// Finish, except that it calls released (unless nil) as soon as the next
// transaction may vote, and returns, like Finish, once this one is
// durable. A server that serialises votes with a lock of its own releases
// it in released, so that finishing transactions share writes.
type EarlyFinisher interface {
	FinishEarly(ctx context.Context, txn *Transaction, released func()) (TID, error)
}

// PipelineAdvertiser is implemented by an EarlyFinisher that decides
// whether a ZEO server may offer its clients pipelined commits (see
// CommitPipeline): without it, every EarlyFinisher is taken to keep a
// pipelining connection's transactions a prefix.
type PipelineAdvertiser interface {
	PipelinesFinishes() bool
}

// Pipeliner is implemented by storages that can commit transactions back
// to back: a ZEO client of a server that lets the next transaction begin
// on a connection while the one before is finishing (the built-in
// backend: group commit then writes them together).
type Pipeliner interface {
	// Pipeline returns a pipeline bound to one connection, or an error
	// (Unsupported when the server cannot pipeline).
	Pipeline(ctx context.Context) (CommitPipeline, error)
}

// CommitPipeline commits transactions in order over one connection. A
// transaction may vote once the tpc_finish of the one before was sent
// (FinishAsync returned); the server takes them in that order. Since
// they share the connection, a lost connection loses a suffix of them,
// never one in the middle: a transaction whose finish failed or whose
// outcome is unknown leaves every later one of the pipeline failed or
// unknown too, so the storage never holds a later one without the
// earlier (the server closes the connection after a finish it refused,
// and a storage whose write failed refuses every later one). Once the
// connection is lost the pipeline fails every call; it never moves to
// another connection.
type CommitPipeline interface {
	Vote(ctx context.Context, txn *Transaction) (VoteResult, error)
	// VoteAsync sends the transaction and its vote and returns at once;
	// wait returns the vote's answer. FinishAsync may follow before it:
	// a finish whose vote failed is refused, and the server then executes
	// nothing the connection sent behind it and closes it, so nothing
	// later commits. (Only for transactions whose vote cannot be a
	// conflict to resolve: restores.)
	VoteAsync(ctx context.Context, txn *Transaction) (wait func(context.Context) (VoteResult, error), err error)
	// FinishAsync sends tpc_finish and returns at once; wait returns the
	// outcome (an OutcomeUnknownError when the connection was lost).
	FinishAsync(txn *Transaction) (wait func(context.Context) (TID, error), err error)
	Abort(ctx context.Context, txn *Transaction) error
	// Alive is false once the pipeline's connection is lost.
	Alive() bool
}

// BlobStorage is implemented by storages that can keep blobs (ZODB's
// IBlobStorage): a store may carry a blob file (Op.Blob), and the blob of
// a committed revision can be read back. A storage whose blob support
// depends on something outside it (a ZEO server's advertisement, every
// backend of an array) reports it with SupportsBlobs; servers advertise
// IBlobStorage only when it is true.
type BlobStorage interface {
	SupportsBlobs() bool
	// OpenBlob opens the blob of oid's revision serial and returns it with
	// its size. A revision without a blob (or no such revision) is a
	// *POSKeyError. The caller closes the reader.
	OpenBlob(ctx context.Context, oid OID, serial TID) (io.ReadCloser, int64, error)
}

// SharedBlobStorage is implemented by blob storages whose committed blobs
// are files in ZODB's bushy layout (BlobOIDPath, BlobFileName) under
// SharedBlobDir, complete and current: a ClientStorage on the same host
// with shared_blob_dir may read them there and hand over new blobs as
// files in that directory (ZEO's storeBlobShared). A storage that is not
// its blobs' sole keeper (a proxy's array) does not implement it.
type SharedBlobStorage interface {
	BlobStorage
	SharedBlobDir() string
}

// TransactionCounter is implemented by storages that can count the
// transactions with start <= tid <= stop without reading their data
// records (a recovery sizes a gap it cannot count from what it remembers).
type TransactionCounter interface {
	CountTransactions(ctx context.Context, start, stop TID) (int, error)
}

// TransactionIterator yields transactions in tid order.
type TransactionIterator interface {
	// Next returns the next transaction, or (nil, nil) at the end.
	Next(ctx context.Context) (*TransactionRecord, error)
	Close() error
}

// Packer removes history.
type Packer interface {
	// Pack removes revisions that are not needed to read at or after
	// packTID, and objects unreachable from the root as of packTID where the
	// storage garbage-collects.
	Pack(ctx context.Context, packTID TID) error
}

// Truncater is implemented by storages that can drop their newest
// transactions (the built-in backend). A RAID array uses it on a degraded
// backend that made durable transactions the array never acknowledged
// (every backend lost while a tpc_finish was in flight), so that the
// backend can be recovered in place instead of rebuilt.
type Truncater interface {
	// Truncate drops every transaction after `after`, provided the
	// storage's last transaction is still last (else it fails and drops
	// nothing). It keeps a copy of what it dropped (TruncateResult.KeptIn)
	// and tells its subscribers with a Reset event at its new last tid.
	Truncate(ctx context.Context, after, last TID) (TruncateResult, error)
}

// TruncateResult says what a Truncate dropped.
type TruncateResult struct {
	// Dropped are the tids of the dropped transactions, in order.
	Dropped []TID
	// Last is the storage's last transaction afterwards.
	Last TID
	// KeptIn is where the storage keeps a copy of the dropped
	// transactions (a file name on its machine; empty if none dropped).
	KeptIn string
}

// Watcher announces commits.
//
// Locking rule: a storage may call subscribers with its internal locks
// held (a RAID array announces a commit under the lock that its reads
// also take to decide where they may go). Therefore fn must not call the
// storage at all, and must not block for long. And a lock that fn takes
// is part of the storage's lock order: code holding such a lock must
// never call the storage, nor wait for anything that calls it, or a read
// waiting for the storage's lock and a commit announcement waiting for
// that lock deadlock each other. (The ZEO server's fan-out is the example:
// its reads call the storage first and take the fan-out lock only
// afterwards, to decide what the reply may say.)
type Watcher interface {
	// Subscribe calls fn for every commit from now on, in tid order, one call
	// at a time, under the locking rule above. The returned function
	// cancels.
	Subscribe(fn func(CommitEvent)) (cancel func())
}

// Syncer is implemented by storages that learn of commits made elsewhere
// (a remote storage, a RAID array). Sync returns once every transaction
// committed anywhere before the call has been delivered to subscribers; the
// ZEO server calls it for ping, which clients use as a barrier.
type Syncer interface {
	Sync(ctx context.Context) error
}

// Storage is the whole contract a ZEO server serves and a ZEO client
// provides: everything a ZEO 5/6 ClientStorage can call. Methods a storage
// cannot support return an *Unsupported error.
type Storage interface {
	Loader
	Committer
	Historian
	Undoer
	Iterator
	Packer
	Watcher
	// Info reports name, size and capabilities. It must be cheap; servers
	// call it after every commit.
	Info(ctx context.Context) (StorageInfo, error)
	Close() error
}

// UndoID returns the undo id FileStorage gives the transaction tid: its
// base64 encoding without the trailing newline.
func UndoID(tid TID) []byte {
	const enc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	// 8 bytes -> 12 characters, the last one '='.
	out := make([]byte, 0, 12)
	b := tid[:]
	for i := 0; i < 6; i += 3 {
		n := uint(b[i])<<16 | uint(b[i+1])<<8 | uint(b[i+2])
		out = append(out, enc[n>>18&63], enc[n>>12&63], enc[n>>6&63], enc[n&63])
	}
	n := uint(b[6])<<16 | uint(b[7])<<8
	out = append(out, enc[n>>18&63], enc[n>>12&63], enc[n>>6&63], '=')
	return out
}

// TIDFromUndoID reverses UndoID.
func TIDFromUndoID(id []byte) (TID, bool) {
	var t TID
	if len(id) != 12 || id[11] != '=' {
		return t, false
	}
	val := func(c byte) (uint, bool) {
		switch {
		case c >= 'A' && c <= 'Z':
			return uint(c - 'A'), true
		case c >= 'a' && c <= 'z':
			return uint(c-'a') + 26, true
		case c >= '0' && c <= '9':
			return uint(c-'0') + 52, true
		case c == '+':
			return 62, true
		case c == '/':
			return 63, true
		}
		return 0, false
	}
	var n uint64
	for _, c := range id[:11] {
		v, ok := val(c)
		if !ok {
			return t, false
		}
		n = n<<6 | uint64(v)
	}
	// 11 characters carry 66 bits; the last 2 are padding and must be 0.
	if n&3 != 0 {
		return t, false
	}
	return TIDFromUint64(n >> 2), true
}
