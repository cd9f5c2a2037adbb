// Package fsm is the replicated state machine the proxies of a cluster
// apply through Raft: per storage the backend state table (with a version
// per row for compare-and-set), the tid ceiling (no tid at or above it was
// ever granted) and oid reservations per proxy; the proxy registry; and
// the longest commit lease a leader may grant. Commands are typed (one
// type byte, then a JSON body); an unknown type or an undecodable entry
// stops the node instead of letting its state diverge, and a command that
// breaks a rule returns an error as its result. Snapshots are versioned
// and a restore replaces the state whole.
//
// The package is pure and deterministic: no clock (times come in the
// commands), no randomness, no I/O beyond the reader and writer it is
// given, and it imports nothing of raidcore; the cluster package converts
// between its rows and raidcore's table and checks raidcore's rules before
// it proposes a change.
package fsm
