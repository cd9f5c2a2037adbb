package storagetest

import (
	"fmt"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// Record returns a ZODB-style data record (class pickle + state pickle, as
// ZODB writes them with one pickler) of a persistent mapping holding a
// value and strong references to refs, so that pack's garbage collection
// can follow them.
func Record(value string, refs ...zodb.OID) []byte {
	b := []byte("\x80\x03cpersistent.mapping\nPersistentMapping\nq\x00.")
	b = append(b, "\x80\x03}q\x01(X\x01\x00\x00\x00vq\x02"...)
	b = append(b, 'X')
	b = appendLE32(b, len(value))
	b = append(b, value...)
	for i, r := range refs {
		key := fmt.Sprintf("r%d", i)
		b = append(b, 'X')
		b = appendLE32(b, len(key))
		b = append(b, key...)
		// persistent id (oid, class) with the class from the memo
		b = append(b, 'C', 8)
		b = append(b, r[:]...)
		b = append(b, 'h', 0, 0x86, 'Q')
	}
	return append(b, 'u', '.')
}

func appendLE32(b []byte, n int) []byte {
	return append(b, byte(n), byte(n>>8), byte(n>>16), byte(n>>24))
}
