package zodb

import (
	"bytes"
	"fmt"
	"io"
)

// TxnMeta is the metadata of a transaction.
type TxnMeta struct {
	User        []byte
	Description []byte
	// Extension is the transaction's extended info as a pickled dict, the
	// form FileStorage stores and ZODB's TransactionMetaData.extension_bytes
	// holds. Empty means {}. Storages keep it verbatim; the wire layer
	// converts it to and from the dict that travels in ZEO messages.
	Extension []byte
}

// Status values of a transaction (one character on the wire).
const (
	StatusNormal     byte = ' '
	StatusPacked     byte = 'p'
	StatusCheckpoint byte = 'c'
	StatusUndone     byte = 'u'
)

// OpKind says what an Op does.
type OpKind uint8

// The operations a client can queue inside a transaction.
const (
	// OpStore stores Data for OID; Serial is the tid the client read
	// (ZeroTID for a new object). A stale serial is a conflict.
	OpStore OpKind = iota + 1
	// OpCheckCurrent asserts that Serial is still the current tid of OID
	// (checkCurrentSerialInTransaction); a stale one is a read conflict.
	OpCheckCurrent
	// OpDelete writes a deletion record for OID (IExternalGC.deleteObject);
	// Serial must be current.
	OpDelete
	// OpRestore writes a record with tid Serial and Data without any
	// conflict check (IStorageRestoreable.restore); NoData records an
	// undone creation. PrevTxn is a backpointer hint or ZeroTID.
	OpRestore
	// OpUndo undoes the transaction named by UndoID (an id from UndoLog).
	OpUndo
)

var opNames = [...]string{"", "store", "checkCurrentSerialInTransaction", "deleteObject", "restore", "undo"}

func (k OpKind) String() string {
	if int(k) < len(opNames) && k > 0 {
		return opNames[k]
	}
	return "op?"
}

// Op is one queued operation of a transaction.
type Op struct {
	Kind   OpKind
	OID    OID
	Serial TID
	// Data is the record's data when it is in memory. A large transaction
	// keeps its data in a spool file instead (Spilled set, Data nil), so
	// that its size does not have to fit in memory; read it with Payload.
	Data    []byte
	Spilled *Spilled
	NoData  bool
	PrevTxn TID
	UndoID  []byte
	// Blob is the blob file stored with this record (ZODB's storeBlob,
	// or restoreBlob with OpRestore); nil for an ordinary record. Only
	// storages that take blobs (BlobStorage) accept it.
	Blob *Blob
}

// Blob is a blob file that travels with a transaction: its content is
// the file at Path, Size bytes. The file belongs to whoever built the
// transaction and stays in place until the transaction ends (finished or
// aborted); a storage copies what it keeps before its vote returns and
// never moves or removes the file. Several backends may read it at the
// same time.
type Blob struct {
	Path string
	Size int64
	// Immutable promises that the file's content never changes, not even
	// after the transaction ends (a server's upload file, which is only
	// ever removed): a storage on the same file system may then keep a
	// hard link to it instead of a copy.
	Immutable bool
}

// Spilled locates an operation's data in a spool: Len bytes at Off of R.
// R must allow concurrent ReadAt calls (an *os.File does), because the
// RAID array streams one transaction to several backends at once.
type Spilled struct {
	R   io.ReaderAt
	Off int64
	Len int
}

// Payload returns the operation's data, read from the spool when it is
// not in memory. The slice is the caller's.
func (op *Op) Payload() ([]byte, error) {
	if op.Spilled == nil {
		return op.Data, nil
	}
	buf := make([]byte, op.Spilled.Len)
	// A ReaderAt may report io.EOF with a full read at the end of its data.
	if n, err := op.Spilled.R.ReadAt(buf, op.Spilled.Off); err != nil && !(n == len(buf) && err == io.EOF) {
		return nil, fmt.Errorf("zodb: reading spooled data of %s: %w", op.OID, err)
	}
	return buf, nil
}

// PayloadLen is the size of the operation's data, in memory or spooled.
func (op *Op) PayloadLen() int {
	if op.Spilled != nil {
		return op.Spilled.Len
	}
	return len(op.Data)
}

// Transaction is everything a client sent between tpc_begin and vote. ZEO
// servers buffer it and hand it to the storage whole, at vote, under the
// commit lock. The pointer identifies the transaction in Vote, Finish and
// Abort and in the CommitEvent of its commit.
type Transaction struct {
	Meta TxnMeta
	// TID is an explicit transaction id (tpc_begin with tid, used when
	// copying transactions and by the RAID proxy); ZeroTID lets the storage
	// choose one. An explicit tid must lie above the storage's last one.
	TID TID
	// Status is the transaction status to record with an explicit tid.
	Status byte
	Ops    []Op
	// CollectConflicts selects ZEO's client-side conflict resolution mode:
	// instead of failing on the first write conflict, Vote collects every
	// conflicting store into VoteResult.Conflicts (and aborts), so that the
	// client can resolve them and vote again.
	CollectConflicts bool
}

// Conflict is one conflicting store, reported to clients that resolve
// conflicts themselves.
type Conflict struct {
	OID OID
	// Committed is the tid currently committed for OID, Read the serial the
	// client's store was based on.
	Committed, Read TID
	// Data is the data the client tried to store.
	Data []byte
}

// VoteResult is the outcome of a successful vote.
type VoteResult struct {
	// Changed lists oids whose stored data differs from what the client
	// sent (undone objects, conflicts resolved by the storage), so the client
	// must not cache its own copy.
	Changed []OID
	// Conflicts is non-empty only for CollectConflicts transactions. The
	// storage has then already aborted the transaction and released its
	// commit lock; Finish must not be called.
	Conflicts []Conflict
}

// CommitEvent announces one committed transaction. Storages deliver events
// in strictly increasing TID order, one at a time, and a read that starts
// after an event was delivered sees that transaction.
type CommitEvent struct {
	TID TID
	// OIDs are the objects the transaction wrote (stored, restored, deleted
	// or undone); the list may be empty.
	OIDs []OID
	// Txn is the transaction when it was committed through Finish of this
	// storage object, nil when somebody else committed it.
	Txn *Transaction
	// Reset, when true, carries no transaction: the storage may have missed
	// commits (for example a remote storage that reconnected) and is now at
	// TID. Subscribers that promised gap-free invalidations must start over.
	Reset bool
}

// ClassName returns "module.Name" of the class a ZODB data record belongs
// to, read from the record's first pickle (what ZODB's get_pickle_metadata
// does for the usual forms), or "" when it cannot tell. Storages use it to
// fill ConflictError.class_name as Python's servers do.
func ClassName(data []byte) string {
	i := 0
	for i < len(data) {
		switch data[i] {
		case 0x80: // PROTO n
			i += 2
			continue
		case '(', '}', ']', ')': // MARK and empty containers before the class
			i++
			continue
		case 'c': // GLOBAL module\nname\n
			rest := data[i+1:]
			nl1 := indexByte(rest, '\n')
			if nl1 <= 0 {
				return ""
			}
			nl2 := indexByte(rest[nl1+1:], '\n')
			if nl2 <= 0 {
				return ""
			}
			return string(rest[:nl1]) + "." + string(rest[nl1+1:nl1+1+nl2])
		}
		return ""
	}
	return ""
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// blobModule is what every blob record mentions: ZODB.blob.Blob's module.
var blobModule = []byte("ZODB.blob")

// MayHoldBlob reports whether a record may be a blob revision. Like
// ZODB's is_blob_record, which looks for the class only in records that
// mention ZODB.blob, it never misses a blob record; whether the revision
// really has a blob is the storage's to say (BlobStorage.OpenBlob).
func MayHoldBlob(data []byte) bool {
	return bytes.Contains(data, blobModule)
}
