// Package zeoserver is a ZEO 5 server: it serves any zodb.Storage (several
// named storages) to unmodified ZODB ClientStorage clients, in M5 or Z5.
//
// It reproduces what Python's ZEO StorageServer guarantees: per-connection
// FIFO execution that never blocks a connection's reader on a pending vote,
// transactions buffered per connection until vote, a commit lock per
// storage, invalidations to every other connection in strictly increasing
// tid order (also for commits the storage reports from elsewhere), no
// stale current revision after an invalidation, ping as a barrier,
// client-side conflict resolution mode, iterators, undo, pack, blobs (for
// storages that keep them: uploads into a spool file, sendBlob streamed;
// storeBlobShared only for a zodb.SharedBlobStorage, whose blob directory
// a client on the same host may share) and extension methods. Malformed input
// costs only the offending connection.
//
// Resources a client can hold are bounded: a message must be completed
// within Config.FrameTimeout once it has begun (a client may idle between
// messages), message buffers grow only as bytes arrive, a transaction's
// data beyond Config.SpoolThreshold is spooled to a temporary file, and
// Config.TransactionTimeout (off by default) bounds how long a transaction
// may hold a storage's commit lock. Server.Stats reports connections, the
// commit lock and counters per storage.
package zeoserver
