package zeoserver

import (
	"time"
)

// StorageStats is a snapshot of one served storage's state and counters,
// for monitoring (the HTTP layer exports it as metrics). Counters are
// totals since the server was created.
type StorageStats struct {
	// Connections is the number of client connections registered for the
	// storage.
	Connections int
	// LockHeld reports whether a transaction holds the storage's commit
	// lock (from acquiring it in vote until finish or abort). LockSince is
	// when it was acquired and LockHolder the remote address of the
	// client whose transaction holds it; both are zero when it is free.
	LockHeld   bool
	LockSince  time.Time
	LockHolder string
	// VotesWaiting is the number of votes waiting for the commit lock.
	VotesWaiting int
	// ActiveTransactions is the number of transactions begun and not yet
	// finished or aborted.
	ActiveTransactions int
	// Commits and Aborts count finished and aborted transactions
	// (disconnects included), Conflicts the votes that failed with a
	// conflict, TransactionTimeouts the transactions aborted for holding
	// the lock longer than Config.TransactionTimeout.
	Commits, Aborts, Conflicts, TransactionTimeouts int64
	// Loads and Stores count loads and stored records.
	Loads, Stores int64
	// SpooledBytes counts the transaction data written to spool files
	// (see Config.SpoolThreshold).
	SpooledBytes int64
}

// Stats returns a snapshot of every storage's StorageStats, by storage
// name. It is cheap and safe to call at any time, also after Close.
func (s *Server) Stats() map[string]StorageStats {
	out := make(map[string]StorageStats, len(s.storages))
	for name, ss := range s.storages {
		st := StorageStats{Connections: ss.fan.connCount()}
		ss.stats.mu.Lock()
		if ss.stats.lockTime != nil {
			st.LockHeld, st.LockSince, st.LockHolder = true, *ss.stats.lockTime, ss.stats.lockHolder
		}
		st.VotesWaiting = int(ss.stats.waiting)
		st.ActiveTransactions = int(ss.stats.activeTxns)
		st.Commits, st.Aborts, st.Conflicts = ss.stats.commits, ss.stats.aborts, ss.stats.conflicts
		st.TransactionTimeouts = ss.stats.txnTimeouts
		st.Loads, st.Stores = ss.stats.loads, ss.stats.stores
		st.SpooledBytes = ss.stats.spooledBytes
		ss.stats.mu.Unlock()
		out[name] = st
	}
	return out
}
