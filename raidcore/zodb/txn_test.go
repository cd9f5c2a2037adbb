package zodb

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// eofAtEnd is a ReaderAt that reports io.EOF together with a full read
// that reaches the end of its data, as io.ReaderAt allows.
type eofAtEnd struct{ data []byte }

func (r eofAtEnd) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(r.data)) {
		return 0, io.EOF
	}
	n := copy(p, r.data[off:])
	if off+int64(n) == int64(len(r.data)) {
		return n, io.EOF
	}
	return n, nil
}

func TestOpPayload(t *testing.T) {
	op := Op{Data: []byte("in memory")}
	if b, err := op.Payload(); err != nil || string(b) != "in memory" || op.PayloadLen() != 9 {
		t.Fatalf("in memory: %q %v", b, err)
	}
	spool := strings.NewReader("0123456789")
	op = Op{Spilled: &Spilled{R: spool, Off: 2, Len: 3}}
	if b, err := op.Payload(); err != nil || string(b) != "234" || op.PayloadLen() != 3 {
		t.Fatalf("spilled: %q %v", b, err)
	}
	// The last record of a spool, from a ReaderAt that says EOF with it.
	op = Op{Spilled: &Spilled{R: eofAtEnd{[]byte("0123456789")}, Off: 7, Len: 3}}
	if b, err := op.Payload(); err != nil || !bytes.Equal(b, []byte("789")) {
		t.Fatalf("spilled at the end: %q %v", b, err)
	}
	// A record that runs past the end of the spool is an error.
	op = Op{Spilled: &Spilled{R: eofAtEnd{[]byte("0123456789")}, Off: 8, Len: 3}}
	if _, err := op.Payload(); err == nil {
		t.Fatal("short spool read accepted")
	}
}

func TestLastRecords(t *testing.T) {
	a, b := OIDFromUint64(1), OIDFromUint64(2)
	recs := []DataRecord{{OID: a, Data: []byte("storea")}, {OID: b, Data: []byte("b")}, {OID: a, Data: []byte("storeBlob")}}
	got := LastRecords(recs)
	if len(got) != 2 || got[0].OID != b || got[1].OID != a || string(got[1].Data) != "storeBlob" {
		t.Fatalf("LastRecords: %+v", got)
	}
	if plain := recs[:2]; &LastRecords(plain)[0] != &plain[0] {
		t.Fatal("records without repeats were copied")
	}
}
