// Package memstorage is a small in-memory zodb.Storage: MVCC reads,
// serial-based conflict detection (with the client-conflict-resolution
// mode), explicit tids, restore, undo, iteration, record iteration, history
// and a pack that drops old revisions (without garbage collection). It
// keeps nothing on disk; it exists for tests and as a trivial backend for
// the ZEO server.
package memstorage
