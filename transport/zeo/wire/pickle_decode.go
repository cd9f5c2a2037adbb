package wire

import (
	"bytes"
	"fmt"
	"math/big"

	ogórek "github.com/kisielk/og-rek"
)

// Limits on decoded values. A frame is already bounded in size, but a
// pickle can make a small frame decode into a huge structure through its
// memo (the same list referenced many times), so the conversion below
// counts every node it visits.
const (
	maxDecodeDepth = 100
	// minNodeBudget is the node budget of a tiny frame; larger frames get
	// a budget proportional to their length.
	minNodeBudget = 1 << 12
)

// DecodePickle decodes one pickle (a whole frame payload) into a Value.
func DecodePickle(data []byte) (v any, err error) {
	defer func() {
		// og-rek is fuzzed, but a decoder bug must cost one connection,
		// not the process.
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("wire: pickle decoder failed: %v", r)
		}
	}()
	r := bytes.NewReader(data)
	dec := ogórek.NewDecoderWithConfig(r, &ogórek.DecoderConfig{StrictUnicode: true, PyDict: true})
	raw, err := dec.Decode()
	if err != nil {
		return nil, fmt.Errorf("wire: bad pickle: %w", err)
	}
	c := converter{budget: minNodeBudget + 4*len(data)}
	return c.convert(raw, 0)
}

type converter struct {
	budget int
}

func (c *converter) convert(x any, depth int) (any, error) {
	if depth > maxDecodeDepth {
		return nil, fmt.Errorf("wire: pickle nested deeper than %d levels", maxDecodeDepth)
	}
	c.budget--
	if c.budget < 0 {
		return nil, fmt.Errorf("wire: pickle expands to too many values")
	}
	switch v := x.(type) {
	case ogórek.None:
		return nil, nil
	case bool, int64, float64, string:
		return v, nil
	case *big.Int:
		if v.IsInt64() {
			return v.Int64(), nil
		}
		if v.IsUint64() {
			return v.Uint64(), nil
		}
		return v, nil
	case ogórek.Bytes:
		c.budget -= len(v) / 64
		return []byte(v), nil
	case ogórek.ByteString:
		// Python 2 str: ZEO treats it as bytes.
		c.budget -= len(v) / 64
		return []byte(v), nil
	case ogórek.Tuple:
		out := make(Tuple, len(v))
		for i, e := range v {
			var err error
			if out[i], err = c.convert(e, depth+1); err != nil {
				return nil, err
			}
		}
		return out, nil
	case []any:
		out := make(List, len(v))
		for i, e := range v {
			var err error
			if out[i], err = c.convert(e, depth+1); err != nil {
				return nil, err
			}
		}
		return out, nil
	case ogórek.Dict:
		out := make(Dict, 0, v.Len())
		var err error
		v.Iter()(func(k, val any) bool {
			var ck, cv any
			if ck, err = c.convert(k, depth+1); err != nil {
				return false
			}
			if cv, err = c.convert(val, depth+1); err != nil {
				return false
			}
			out = append(out, Item{ck, cv})
			return true
		})
		if err != nil {
			return nil, err
		}
		sortDict(out)
		return out, nil
	case ogórek.Class:
		return Global{Module: v.Module, Name: v.Name}, nil
	case ogórek.Call:
		args := make([]any, len(v.Args))
		for i, e := range v.Args {
			var err error
			if args[i], err = c.convert(e, depth+1); err != nil {
				return nil, err
			}
		}
		return Global{Module: v.Callable.Module, Name: v.Callable.Name, Args: args}, nil
	}
	return nil, fmt.Errorf("wire: unsupported pickle value %T", x)
}
