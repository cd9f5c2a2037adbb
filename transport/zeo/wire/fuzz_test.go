package wire

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// seedFrames adds a sample of recorded payloads of the given encoding.
func seedFrames(f *testing.F, enc Encoding) {
	n := 0
	for _, fr := range loadTraces(f) {
		if fr.Kind == "message" && fr.Enc == enc && n < 200 {
			f.Add(fr.payload(f))
			n++
		}
	}
}

func hasGlobal(v any) bool { return containsGlobal(v) }

// FuzzDecodePickle: never panic; whatever decodes (without globals)
// re-encodes and decodes to the same value.
func FuzzDecodePickle(f *testing.F) {
	seedFrames(f, Pickle)
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := DecodePickle(data)
		if err != nil || hasGlobal(v) {
			return
		}
		b, err := AppendPickle(nil, v)
		if err != nil {
			t.Fatalf("decoded %s but cannot re-encode: %v", Repr(v), err)
		}
		w, err := DecodePickle(b)
		if err != nil || !Equal(v, w) {
			t.Fatalf("round trip: %s -> %s (%v)", Repr(v), Repr(w), err)
		}
	})
}

// FuzzDecodeMsgpack: never panic; decoded values round-trip.
func FuzzDecodeMsgpack(f *testing.F) {
	seedFrames(f, Msgpack)
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := DecodeMsgpack(data)
		if err != nil {
			return
		}
		b, err := AppendMsgpack(nil, v)
		if err != nil {
			t.Fatalf("decoded %s but cannot re-encode: %v", Repr(v), err)
		}
		w, err := DecodeMsgpack(b)
		if err != nil || !Equal(v, w) {
			t.Fatalf("round trip: %s -> %s (%v)", Repr(v), Repr(w), err)
		}
	})
}

// FuzzDecodeMessage runs the message layer over both decoders.
func FuzzDecodeMessage(f *testing.F) {
	seedFrames(f, Pickle)
	seedFrames(f, Msgpack)
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, enc := range []Encoding{Pickle, Msgpack} {
			m, err := enc.Decode(data)
			if err != nil {
				continue
			}
			if m.Method == "" && !m.IsReply() && m.Flags < 0 {
				t.Fatal("impossible message")
			}
			if !m.IsReply() {
				if _, ok := Seq(m.Args); !ok {
					t.Fatalf("call with non-sequence args accepted: %s", Repr(m.Args))
				}
			}
			if m.Flags == FlagError {
				_ = ErrorFromValue(m.Args)
			}
		}
	})
}

// FuzzReadFrame: the frame reader never returns more than the limit and
// never panics on any byte stream.
func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{0, 0, 0, 2, 'Z', '5'})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1})
	f.Add([]byte{0, 0, 0, 10, 1, 2})
	f.Fuzz(func(t *testing.T, data []byte) {
		const max = 1 << 12
		fr := NewFrameReader(bytes.NewReader(data), max)
		for i := 0; i < 100; i++ {
			p, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if len(p) > max {
				t.Fatalf("frame of %d bytes over the limit", len(p))
			}
		}
	})
}

func TestDecoderLimits(t *testing.T) {
	// A memo bomb: each level is a list holding the previous one 8 times.
	b := []byte{0x80, 3, ']', 'K', 1, 'a', 'q', 0}
	for lvl := 1; lvl < 30; lvl++ {
		b = append(b, ']', '(')
		for i := 0; i < 8; i++ {
			b = append(b, 'h', byte(lvl-1))
		}
		b = append(b, 'e', 'q', byte(lvl))
	}
	b = append(b, '.')
	if _, err := DecodePickle(b); err == nil {
		t.Fatal("memo bomb decoded")
	}
	deep := []byte{0x80, 3}
	for i := 0; i < 500; i++ {
		deep = append(deep, ']')
	}
	for i := 0; i < 499; i++ {
		deep = append(deep, 'a')
	}
	if _, err := DecodePickle(append(deep, '.')); err == nil {
		t.Fatal("500 levels of nesting decoded")
	}
	// msgpack: an array header claiming 2^32-1 elements in a tiny frame.
	if _, err := DecodeMsgpack([]byte{0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0}); err == nil {
		t.Fatal("huge msgpack array decoded")
	}
	if _, err := DecodeMsgpack([]byte{0xc6, 0xff, 0xff, 0xff, 0xff, 0}); err == nil {
		t.Fatal("huge msgpack bin decoded")
	}
	if _, err := DecodeMsgpack([]byte{0x91, 0xc0, 0xc0}); err == nil {
		t.Fatal("trailing bytes accepted")
	}
	// The frame reader refuses a header above the limit before reading on.
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], 1<<31)
	if _, err := NewFrameReader(bytes.NewReader(hdr[:]), 1<<20).ReadFrame(); err == nil {
		t.Fatal("2 GiB frame accepted")
	}
	if _, err := NewFrameReader(bytes.NewReader([]byte{0, 0, 0, 9, 1}), 0).ReadFrame(); err != ErrTruncatedFrame {
		t.Fatalf("truncated frame: %v", err)
	}
}

func TestHandshakeRules(t *testing.T) {
	for _, c := range []struct {
		greeting string
		prefer   Encoding
		want     string
		ok       bool
	}{
		{"Z5", 0, "Z5", true}, {"M5", 0, "M5", true}, {"M5", Pickle, "Z5", true},
		{"Z6", 0, "Z5", true}, {"Z99999", 0, "Z5", true}, {"Z4", 0, "", false},
		{"Z3101", 0, "", false}, {"X5", 0, "", false}, {"", 0, "", false},
	} {
		_, ans, err := ClientAnswer([]byte(c.greeting), c.prefer)
		if (err == nil) != c.ok || string(ans) != c.want {
			t.Errorf("greeting %q prefer %c: %q %v", c.greeting, c.prefer, ans, err)
		}
	}
	for _, c := range []struct {
		answer string
		enc    Encoding
		ruok   bool
		ok     bool
	}{{"Z5", Pickle, false, true}, {"M5", Msgpack, false, true}, {"ruok", 0, true, true},
		{"Z4", 0, false, false}, {"X5", 0, false, false}, {"Z", 0, false, false}, {"Z55", 0, false, false}} {
		enc, ruok, err := ParseClientAnswer([]byte(c.answer))
		if (err == nil) != c.ok || enc != c.enc || ruok != c.ruok {
			t.Errorf("answer %q: %c %v %v", c.answer, enc, ruok, err)
		}
	}
}

func TestExtensionFromBuiltinsDict(t *testing.T) {
	// What ZODB's IteratorStorage test sends: a dict subclass reduced to
	// builtins.dict((("foo", 1),)), bytes from zodbpickle.
	p := []byte("\x80\x03cbuiltins\ndict\nq\x00X\x03\x00\x00\x00fooq\x01K\x01\x86q\x02\x85q\x03\x85q\x04Rq\x05.")
	v, err := DecodePickle(p)
	if err != nil {
		t.Fatal(err)
	}
	ext, err := ExtensionFromValue(v)
	if err != nil {
		t.Fatal(err)
	}
	if d := ExtensionDict(ext); !Equal(d, NewDict("foo", int64(1))) {
		t.Fatalf("extension %s", Repr(d))
	}
}
