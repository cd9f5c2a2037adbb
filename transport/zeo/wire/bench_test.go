package wire

import (
	"testing"
)

// benchMessages are typical messages: a loadBefore reply with a 200-byte
// record, a storea call, and an invalidation of 10 oids.
func benchMessages() map[string]Message {
	oid := []byte{0, 0, 0, 0, 0, 0, 0, 42}
	tid := []byte{0x03, 0xf5, 0x8e, 0, 0, 0, 0, 1}
	data := make([]byte, 200)
	oids := make(List, 10)
	for i := range oids {
		oids[i] = oid
	}
	return map[string]Message{
		"loadBefore-reply": NewReply(Tuple{oid, tid}, Tuple{data, tid, nil}),
		"storea":           NewOneWay("storea", oid, tid, data, int64(140000000000000)),
		"invalidate":       NewOneWay("invalidateTransaction", tid, oids),
	}
}

func BenchmarkEncode(b *testing.B) {
	for _, enc := range []Encoding{Pickle, Msgpack} {
		for name, m := range benchMessages() {
			b.Run(string(rune(enc))+"/"+name, func(b *testing.B) {
				b.ReportAllocs()
				buf := make([]byte, 0, 1024)
				for i := 0; i < b.N; i++ {
					var err error
					if buf, err = enc.AppendEncoded(buf[:0], m); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	for _, enc := range []Encoding{Pickle, Msgpack} {
		for name, m := range benchMessages() {
			p, err := enc.Encode(m)
			if err != nil {
				b.Fatal(err)
			}
			b.Run(string(rune(enc))+"/"+name, func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(p)))
				for i := 0; i < b.N; i++ {
					if _, err := enc.Decode(p); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
