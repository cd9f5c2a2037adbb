// Package raidcore will hold the RAID-1 controller: backends and their
// health, the mirrored two-phase commit, read routing, result comparison,
// degrading, online recovery, invalidation fan-in and fan-out, and the
// management API, behind a small Coordinator interface for every cluster
// decision.
//
// Today it holds only its sub-packages: zodb (the shared ZODB vocabulary)
// and zodb/memstorage (an in-memory storage for tests).
package raidcore
