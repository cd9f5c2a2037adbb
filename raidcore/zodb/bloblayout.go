package zodb

import (
	"encoding/hex"
	"path/filepath"
	"strings"
)

// ZODB's "bushy" blob directory layout (ZODB.blob.BushyLayout), which a
// ClientStorage with shared_blob_dir reads and writes directly:
//
//	<dir>/.layout                       the word "bushy"
//	<dir>/0x00/0x00/0x00/0x00/0x00/0x00/0x00/0x2a/0x03ecb3a6b1e2a2bb.blob
//
// one directory level per byte of the oid (most significant first), and
// the revision's file named by the tid in ZODB's repr (utils.tid_repr:
// hex without leading zeros, two digits per byte).

// BlobLayoutMarker is the file that names a blob directory's layout, and
// BushyLayout the name written in it.
const (
	BlobLayoutMarker = ".layout"
	BushyLayout      = "bushy"
)

// BlobOIDPath is oid's directory in the bushy layout, relative to the blob
// directory.
func BlobOIDPath(oid OID) string {
	parts := make([]string, len(oid))
	for i, b := range oid {
		parts[i] = "0x" + hex.EncodeToString([]byte{b})
	}
	return filepath.Join(parts...)
}

// BlobFileName is the name of the file of revision tid's blob in its
// oid's directory (ZODB: tid_repr(tid) + ".blob").
func BlobFileName(tid TID) string {
	return IDRepr(tid) + ".blob"
}

// IDRepr is ZODB's utils.oid_repr/tid_repr of an 8-byte id: "0x" and the
// hex digits without leading zeros, an even number of them ("0x00" for 0).
func IDRepr(id [8]byte) string {
	h := strings.TrimLeft(hex.EncodeToString(id[:]), "0")
	switch {
	case h == "":
		h = "00"
	case len(h)%2 == 1:
		h = "0" + h
	}
	return "0x" + h
}

// IsSharedBlobTempName reports whether name is what a ClientStorage with a
// shared blob directory may pass to storeBlobShared: a plain file name
// (no "/", the only separator on the POSIX systems zeoraid runs on; a
// backslash is an ordinary character, and ZODB makes names with them
// from a str serial's repr) made by ZODB's blob_mkstemp, ending in ".tmp"
// or ".tmp" and one more character (ZEO's own check, which
// ClientStorage's rename-to-"-" satisfies).
func IsSharedBlobTempName(name string) bool {
	if name == "" || strings.ContainsAny(name, "/\x00") {
		return false
	}
	return strings.HasSuffix(name, ".tmp") || len(name) > 4 && strings.HasSuffix(name[:len(name)-1], ".tmp")
}
