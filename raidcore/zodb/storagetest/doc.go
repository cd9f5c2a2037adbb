// Package storagetest is the contract every zodb.Storage must meet, as a
// table of behaviours that runs against any implementation: the in-memory
// storage, the built-in bbolt backend, a remote ZEO server through the Go
// client (zeoraid's own or Python's FileStorage), and later the RAID
// array. Where ZODB leaves a choice, the behaviour of FileStorage is the
// reference.
package storagetest
