package zodb

import (
	"path/filepath"
	"testing"
)

// The expected paths are what ZODB 6.3 computes:
// ZODB.blob.BushyLayout().getBlobFilePath(p64(oid), p64(tid)) and
// ZODB.utils.tid_repr.
func TestBlobLayout(t *testing.T) {
	for _, c := range []struct {
		oid, tid uint64
		want     string
	}{
		{0, 0, "0x00/0x00/0x00/0x00/0x00/0x00/0x00/0x00/0x00.blob"},
		{1, 0x03ecb3a6b1e2a2bb, "0x00/0x00/0x00/0x00/0x00/0x00/0x00/0x01/0x03ecb3a6b1e2a2bb.blob"},
		{0x2a1f, 0x0f, "0x00/0x00/0x00/0x00/0x00/0x00/0x2a/0x1f/0x0f.blob"},
		{0x0102030405060708, 0x100, "0x01/0x02/0x03/0x04/0x05/0x06/0x07/0x08/0x0100.blob"},
		{0xffffffffffffffff, 0xffffffffffffffff, "0xff/0xff/0xff/0xff/0xff/0xff/0xff/0xff/0xffffffffffffffff.blob"},
	} {
		got := filepath.Join(BlobOIDPath(OIDFromUint64(c.oid)), BlobFileName(TIDFromUint64(c.tid)))
		if got != filepath.FromSlash(c.want) {
			t.Errorf("oid %#x tid %#x: %s, want %s", c.oid, c.tid, got, c.want)
		}
	}
}

// ZEO's StorageServer.storeBlobShared accepts a name without a path
// separator that ends in ".tmp", or in ".tmp" and one more character.
func TestIsSharedBlobTempName(t *testing.T) {
	for name, want := range map[string]bool{
		"0x03ecb3a6b1e2a2bbk3j4_x9.tmp-": true,
		"0x03ecb3a6b1e2a2bbk3j4_x9.tmp":  true,
		"x.tmpz":                         true,
		".tmp":                           true,
		"":                               false,
		"0x03ecb3a6b1e2a2bb.blob":        false,
		"../x.tmp":                       false,
		"a/b.tmp-":                       false,
		`'\x00\x00'k3_x.tmp-`:            true, // tid_repr of a str serial
		"x.tmp--":                        false,
		"x.tm":                           false,
		"x.tmp\x00":                      false,
	} {
		if got := IsSharedBlobTempName(name); got != want {
			t.Errorf("IsSharedBlobTempName(%q) = %v, want %v", name, got, want)
		}
	}
}
