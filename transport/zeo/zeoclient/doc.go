// Package zeoclient is a ZEO 5 client that is a zodb.Storage for a remote
// ZEO server (Python's runzeo or zeoraid's own): pipelined calls with a
// deadline each, invalidations and info delivered in order, commits with
// an explicit tid (what a RAID proxy needs), restore, undo, iteration,
// heartbeats and reconnection with backoff. A connection lost after
// tpc_finish was sent and before its reply yields
// *zodb.OutcomeUnknownError, because the transaction may have committed.
// Vote streams a transaction's records with backpressure, so that its size
// is bounded by neither memory nor the send queue.
package zeoclient
