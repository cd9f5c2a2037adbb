package fsm_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/zeoraid/zeoraid/fsm"
)

// FuzzDecode: any bytes decode to a command or an error, never a panic,
// and a decoded command encodes to an entry that decodes to the same.
func FuzzDecode(f *testing.F) {
	for _, c := range sequence() {
		b, _ := fsm.Encode(c)
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{200, '{', '}'})
	f.Fuzz(func(t *testing.T, entry []byte) {
		c, err := fsm.Decode(entry)
		if err != nil {
			return
		}
		b, err := fsm.Encode(c)
		if err != nil {
			t.Fatalf("decoded %q to %#v, which does not encode: %v", entry, c, err)
		}
		again, err := fsm.Decode(b)
		if err != nil {
			t.Fatalf("re-encoded %q does not decode: %v", b, err)
		}
		b2, _ := fsm.Encode(again)
		if !bytes.Equal(b, b2) {
			t.Fatalf("not stable: %q then %q", b, b2)
		}
		// Applying a decodable command never panics: rules answer with
		// errors.
		f := fsm.New()
		f.Apply(1, b)
	})
}

// FuzzRestore: any bytes restore or fail with an error and leave the
// state as it was.
func FuzzRestore(f *testing.F) {
	a := fsm.New()
	for i, c := range sequence() {
		b, _ := fsm.Encode(c)
		a.Apply(uint64(i+1), b)
	}
	var buf bytes.Buffer
	a.Snapshot().WriteTo(&buf)
	f.Add(buf.Bytes())
	f.Add([]byte(`{"format":"zeoraid-fsm","version":1,"state":{}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		f := fsm.New()
		b, _ := fsm.Encode(fsm.RegisterProxy{Proxy: fsm.Proxy{ID: "keep"}})
		f.Apply(1, b)
		if err := f.Restore(bytes.NewReader(data)); err != nil {
			if f.State().Proxies["keep"].ID != "keep" {
				t.Fatalf("a failed restore changed the state: %v", err)
			}
			return
		}
		// A restored state snapshots and restores again to the same.
		var one, two bytes.Buffer
		f.Snapshot().WriteTo(&one)
		g := fsm.New()
		if err := g.Restore(strings.NewReader(one.String())); err != nil {
			t.Fatalf("own snapshot does not restore: %v", err)
		}
		g.Snapshot().WriteTo(&two)
		if one.String() != two.String() {
			t.Fatalf("not stable:\n%s\n%s", one.String(), two.String())
		}
		// And commands apply to it without a panic.
		for _, c := range sequence() {
			b, _ := fsm.Encode(c)
			_, res := g.Apply(g.Applied()+1, b)
			if err, ok := res.(error); ok && errors.Is(err, fsm.ErrUnknownType) {
				t.Fatal(err)
			}
		}
	})
}
