// Package boltstore is zeoraid's built-in storage engine: a crash-safe MVCC
// zodb.Storage in one go.etcd.io/bbolt file per storage.
//
// Layout (format version 1), all keys big-endian:
//
//	meta     "format", "version", "name", "last_tid", "next_oid", "length", "size", "pack_tid"
//	records  oid|tid -> flags(1) | data_txn(8) | data     (every revision)
//	txns     tid     -> status(1) | user | description | extension | oids  (length-prefixed)
//	current  oid     -> tid of the newest revision
//	blobs       oid|tid -> size            (revisions that have a blob file)
//	blob_trash  oid|tid                    (blob files pack dropped, to remove)
//
// Blob files live beside the data file, in <path>.blobs, in ZODB's bushy
// layout (one directory per oid byte, the file named by the tid's repr:
// a ClientStorage on the same host may share the directory), staged and
// fsynced in <path>.blobs/.staging at vote and renamed
// into place after the group write that records them; Open finishes or
// removes what a crash left staged and empties pack's trash (blobs.go
// says why no committed record can lose its blob and no file outlives its
// record beyond a restart). Undo links the blob of the revision it goes
// back to; pack removes the files of the revisions it drops.
//
// A transaction is planned at vote (txnplan, under the storage's commit
// lock, against a read snapshot overlaid with the finished transactions
// not yet in bbolt) and written after finish by one committer goroutine,
// which appends every transaction finished by then to the journal
// (<path>.journal) as one checksummed record with one fdatasync (group
// commit), and later moves many journaled groups into bbolt in one write
// transaction (journal.go says why that is safe). Finish releases the
// commit lock as soon as its transaction is queued (so the next one votes
// meanwhile: zodb.EarlyFinisher tells the ZEO server to release its lock
// too) and returns once it is durable; only then is it announced and
// counted in LastTransaction, and reads wait for it to be in bbolt, so a
// crash loses only transactions whose Finish had not returned, and leaves
// each transaction all there or not at all. Open applies what a crash
// left in the journal. A failed write fails every queued
// transaction and the store refuses writes until reopened (groupcommit.go
// says why). Readers use bbolt's MVCC snapshots and never wait for writers.
// New oids are reserved in blocks that are persisted before any oid of the
// block is handed out, so a restart never hands one out twice. Pack prunes
// revisions nobody can read at or after the pack time and, following
// references like ZODB's referencesf, objects unreachable from the root;
// it computes without locks and holds the commit lock only to re-check
// what was committed meanwhile and delete. Truncate (truncate.go) drops
// the newest transactions for a RAID array that never acknowledged them,
// after keeping a copy in <path>.dropped.
package boltstore
