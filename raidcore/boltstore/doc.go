// Package boltstore is zeoraid's built-in storage engine: a crash-safe MVCC
// zodb.Storage in one go.etcd.io/bbolt file per storage.
//
// Layout (format version 1), all keys big-endian:
//
//	meta     "format", "version", "name", "last_tid", "next_oid", "length", "size", "pack_tid"
//	records  oid|tid -> flags(1) | data_txn(8) | data     (every revision)
//	txns     tid     -> status(1) | user | description | extension | oids  (length-prefixed)
//	current  oid     -> tid of the newest revision
//
// A transaction is planned at vote (txnplan, under the storage's commit
// lock, against a read snapshot) and written at finish in one bbolt write
// transaction, which fsyncs before it returns: a crash leaves all of it or
// none. Readers use bbolt's MVCC snapshots and never wait for writers.
// New oids are reserved in blocks that are persisted before any oid of the
// block is handed out, so a restart never hands one out twice. Pack prunes
// revisions nobody can read at or after the pack time and, following
// references like ZODB's referencesf, objects unreachable from the root;
// it computes without locks and holds the commit lock only to re-check
// what was committed meanwhile and delete.
package boltstore
