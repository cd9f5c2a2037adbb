// Package wire is the ZEO 5 wire format: length-prefixed frames, the
// protocol handshake, the message 4-tuple and its two encodings, M5
// (msgpack) and Z5 (pickle protocol 3), plus the mapping between ZODB
// values (oids, tids, errors, transaction extensions) and wire values.
//
// Decoded messages are made of a small set of Go types that keep every
// distinction a Python peer depends on (see Value). The encoders produce
// exactly the bytes Python's ZEO produces for the same message, which the
// golden tests check against frames recorded between real ZODB clients and
// servers.
//
// The package does no I/O beyond reading and writing frames on a given
// reader or writer; connection management lives in zeoserver and
// zeoclient.
package wire
