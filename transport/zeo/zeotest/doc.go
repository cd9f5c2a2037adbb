// Package zeotest has helpers for tests of ZEO servers and clients: a
// server over in-memory storages on a loopback port, and a TCP relay that
// a test can cut to simulate network failures.
package zeotest
