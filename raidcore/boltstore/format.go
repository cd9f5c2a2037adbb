package boltstore

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

const (
	formatMagic   = "zeoraid-boltstore"
	formatVersion = 1
)

var (
	bucketMeta    = []byte("meta")
	bucketRecords = []byte("records")
	bucketTxns    = []byte("txns")
	bucketCurrent = []byte("current")

	keyFormat  = []byte("format")
	keyVersion = []byte("version")
	keyName    = []byte("name")
	keyLastTID = []byte("last_tid")
	keyNextOID = []byte("next_oid")
	keyLength  = []byte("length")
	keySize    = []byte("size")
	keyPackTID = []byte("pack_tid")
)

const flagNoData = 1

func recordKey(oid zodb.OID, tid zodb.TID) []byte {
	k := make([]byte, 16)
	copy(k, oid[:])
	copy(k[8:], tid[:])
	return k
}

func splitRecordKey(k []byte) (zodb.OID, zodb.TID) {
	var oid zodb.OID
	var tid zodb.TID
	copy(oid[:], k[:8])
	copy(tid[:], k[8:16])
	return oid, tid
}

func encodeRecord(r zodb.DataRecord) []byte {
	v := make([]byte, 9+len(r.Data))
	if r.NoData {
		v[0] = flagNoData
	}
	copy(v[1:9], r.DataTxn[:])
	copy(v[9:], r.Data)
	return v
}

// decodeRecord copies the value (bbolt's memory is only valid inside its
// transaction).
func decodeRecord(oid zodb.OID, tid zodb.TID, v []byte) (zodb.DataRecord, error) {
	if len(v) < 9 {
		return zodb.DataRecord{}, fmt.Errorf("boltstore: record %s@%s is %d bytes: corrupt", oid, tid, len(v))
	}
	r := zodb.DataRecord{OID: oid, TID: tid, NoData: v[0]&flagNoData != 0}
	copy(r.DataTxn[:], v[1:9])
	if !r.NoData {
		r.Data = append([]byte{}, v[9:]...)
	}
	return r, nil
}

type txnHeader struct {
	status byte
	meta   zodb.TxnMeta
	oids   []zodb.OID
}

func encodeTxn(h txnHeader) []byte {
	n := 1 + 12 + len(h.meta.User) + len(h.meta.Description) + len(h.meta.Extension) + 4 + 8*len(h.oids)
	v := make([]byte, 0, n)
	v = append(v, h.status)
	for _, part := range [][]byte{h.meta.User, h.meta.Description, h.meta.Extension} {
		v = binary.BigEndian.AppendUint32(v, uint32(len(part)))
		v = append(v, part...)
	}
	v = binary.BigEndian.AppendUint32(v, uint32(len(h.oids)))
	for _, o := range h.oids {
		v = append(v, o[:]...)
	}
	return v
}

var errCorruptTxn = errors.New("boltstore: corrupt transaction header")

func decodeTxn(v []byte) (txnHeader, error) {
	var h txnHeader
	if len(v) < 1 {
		return h, errCorruptTxn
	}
	h.status = v[0]
	v = v[1:]
	parts := make([][]byte, 3)
	for i := range parts {
		if len(v) < 4 {
			return h, errCorruptTxn
		}
		n64 := uint64(binary.BigEndian.Uint32(v))
		v = v[4:]
		if n64 > uint64(len(v)) {
			return h, errCorruptTxn
		}
		n := int(n64)
		parts[i] = append([]byte{}, v[:n]...)
		v = v[n:]
	}
	h.meta = zodb.TxnMeta{User: parts[0], Description: parts[1], Extension: parts[2]}
	if len(h.meta.Extension) == 0 {
		h.meta.Extension = nil
	}
	if len(v) < 4 {
		return h, errCorruptTxn
	}
	n64 := uint64(binary.BigEndian.Uint32(v))
	v = v[4:]
	if n64*8 != uint64(len(v)) {
		return h, errCorruptTxn
	}
	n := int(n64)
	h.oids = make([]zodb.OID, n)
	for i := range h.oids {
		copy(h.oids[i][:], v[8*i:])
	}
	return h, nil
}

func u64(v []byte) uint64 {
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func b64(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }
