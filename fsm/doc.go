// Package fsm will hold the replicated state machine applied by Raft: the
// backend state table, TID and OID reservations, the proxy registry and
// commit lease bookkeeping, as typed commands with versioned snapshots. It
// must stay pure and deterministic: no clock, randomness or I/O.
//
// It is empty until the cluster issue lands.
package fsm
