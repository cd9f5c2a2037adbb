package pickle

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/big"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// Pickle opcodes (protocol 3 and the few older ones a decoder meets).
const (
	opMark          = '('
	opStop          = '.'
	opNone          = 'N'
	opNewTrue       = 0x88
	opNewFalse      = 0x89
	opBinInt        = 'J'
	opBinInt1       = 'K'
	opBinInt2       = 'M'
	opLong1         = 0x8a
	opLong4         = 0x8b
	opBinFloat      = 'G'
	opBinUnicode    = 'X'
	opShortBinBytes = 'C'
	opBinBytes      = 'B'
	opEmptyTuple    = ')'
	opTuple         = 't'
	opTuple1        = 0x85
	opTuple2        = 0x86
	opTuple3        = 0x87
	opEmptyList     = ']'
	opAppend        = 'a'
	opAppends       = 'e'
	opEmptyDict     = '}'
	opSetItem       = 's'
	opSetItems      = 'u'
	opProto         = 0x80
	pickleBatchSize = 1000
	MaxNesting      = 200
)

// Append appends the pickle (protocol 3, no memo, the opcodes
// zodbpickle's C pickler emits in ZEO's "fast" mode) of v to buf.
func Append(buf []byte, v any) ([]byte, error) {
	buf = append(buf, opProto, 3)
	buf, err := appendPickleValue(buf, v, 0)
	if err != nil {
		return nil, err
	}
	return append(buf, opStop), nil
}

func appendPickleValue(buf []byte, v any, depth int) ([]byte, error) {
	// The values of nearly every message, with a small stack frame: this
	// recursion runs on goroutines that start small, and a large frame
	// (the rest of the cases, below) made them grow their stacks on
	// every message.
	if depth > MaxNesting {
		return nil, errNesting()
	}
	switch x := v.(type) {
	case nil:
		return append(buf, opNone), nil
	case int64:
		return appendPickleInt(buf, x), nil
	case string:
		buf = append(buf, opBinUnicode)
		buf = binary.LittleEndian.AppendUint32(buf, uint32(len(x)))
		return append(buf, x...), nil
	case []byte:
		return appendPickleBytes(buf, x), nil
	case zodb.OID:
		return appendPickleBytes(buf, x[:]), nil
	case zodb.TID:
		return appendPickleBytes(buf, x[:]), nil
	case Tuple:
		return appendPickleTuple(buf, x, depth)
	case []any:
		return appendPickleTuple(buf, x, depth)
	}
	return appendPickleOther(buf, v, depth)
}

//go:noinline
func errNesting() error {
	return fmt.Errorf("pickle: value nested deeper than %d levels", MaxNesting)
}

// appendPickleOther encodes the values appendPickleValue leaves to it
// (its caller has checked the depth).
//
//go:noinline
func appendPickleOther(buf []byte, v any, depth int) ([]byte, error) {
	switch x := v.(type) {
	case bool:
		if x {
			return append(buf, opNewTrue), nil
		}
		return append(buf, opNewFalse), nil
	case int:
		return appendPickleInt(buf, int64(x)), nil
	case uint64:
		if x <= math.MaxInt64 {
			return appendPickleInt(buf, int64(x)), nil
		}
		return appendPickleLong(buf, new(big.Int).SetUint64(x)), nil
	case *big.Int:
		if x.IsInt64() {
			return appendPickleInt(buf, x.Int64()), nil
		}
		return appendPickleLong(buf, x), nil
	case float64:
		buf = append(buf, opBinFloat)
		return binary.BigEndian.AppendUint64(buf, math.Float64bits(x)), nil
	case List:
		buf = append(buf, opEmptyList)
		if len(x) == 1 {
			buf, err := appendPickleValue(buf, x[0], depth+1)
			return append(buf, opAppend), err
		}
		for start := 0; start < len(x); start += pickleBatchSize {
			end := min(start+pickleBatchSize, len(x))
			buf = append(buf, opMark)
			for _, e := range x[start:end] {
				var err error
				if buf, err = appendPickleValue(buf, e, depth+1); err != nil {
					return nil, err
				}
			}
			buf = append(buf, opAppends)
		}
		return buf, nil
	case Dict:
		buf = append(buf, opEmptyDict)
		if len(x) == 0 {
			return buf, nil
		}
		if len(x) == 1 {
			buf, err := appendPickleItem(buf, x[0], depth)
			return append(buf, opSetItem), err
		}
		// CPython's batch_dict_exact writes an empty trailing batch when
		// the size is a multiple of the batch size; so do we.
		for start := 0; ; start += pickleBatchSize {
			end := min(start+pickleBatchSize, len(x))
			buf = append(buf, opMark)
			for _, it := range x[start:end] {
				var err error
				if buf, err = appendPickleItem(buf, it, depth); err != nil {
					return nil, err
				}
			}
			buf = append(buf, opSetItems)
			if end-start < pickleBatchSize {
				return buf, nil
			}
		}
	case *zodb.RemoteError:
		return appendPickleTuple(buf, []any{x.Class, x.Raw}, depth)
	case zodb.PythonError:
		return appendPickleTuple(buf, []any{x.PythonClass(), PayloadValue(x.PythonPayload())}, depth)
	case Global:
		return nil, fmt.Errorf("pickle: refusing to pickle global %s.%s", x.Module, x.Name)
	}
	return nil, fmt.Errorf("pickle: cannot pickle %T", v)
}

func appendPickleItem(buf []byte, it Item, depth int) ([]byte, error) {
	buf, err := appendPickleValue(buf, it.Key, depth+1)
	if err != nil {
		return nil, err
	}
	return appendPickleValue(buf, it.Value, depth+1)
}

func appendPickleTuple(buf []byte, t []any, depth int) ([]byte, error) {
	if len(t) == 0 {
		return append(buf, opEmptyTuple), nil
	}
	if len(t) > 3 {
		buf = append(buf, opMark)
	}
	for _, e := range t {
		var err error
		if buf, err = appendPickleValue(buf, e, depth+1); err != nil {
			return nil, err
		}
	}
	switch len(t) {
	case 1:
		return append(buf, opTuple1), nil
	case 2:
		return append(buf, opTuple2), nil
	case 3:
		return append(buf, opTuple3), nil
	}
	return append(buf, opTuple), nil
}

func appendPickleBytes(buf []byte, b []byte) []byte {
	if len(b) <= 0xff {
		buf = append(buf, opShortBinBytes, byte(len(b)))
	} else {
		buf = append(buf, opBinBytes)
		buf = binary.LittleEndian.AppendUint32(buf, uint32(len(b)))
	}
	return append(buf, b...)
}

func appendPickleInt(buf []byte, n int64) []byte {
	switch {
	case n >= 0 && n <= 0xff:
		return append(buf, opBinInt1, byte(n))
	case n >= 0 && n <= 0xffff:
		return append(buf, opBinInt2, byte(n), byte(n>>8))
	case n >= math.MinInt32 && n <= math.MaxInt32:
		buf = append(buf, opBinInt)
		return binary.LittleEndian.AppendUint32(buf, uint32(int32(n)))
	}
	return appendPickleLong(buf, big.NewInt(n))
}

// appendPickleLong writes LONG1/LONG4 with Python's encode_long: the
// shortest little-endian two's complement representation.
func appendPickleLong(buf []byte, n *big.Int) []byte {
	var enc []byte
	if n.Sign() != 0 {
		nbytes := n.BitLen()/8 + 1
		enc = make([]byte, nbytes)
		// Two's complement of n in nbytes bytes, little-endian.
		v := new(big.Int).Set(n)
		if v.Sign() < 0 {
			v.Add(v, new(big.Int).Lsh(big.NewInt(1), uint(8*nbytes)))
		}
		be := v.FillBytes(make([]byte, nbytes))
		for i := range be {
			enc[i] = be[nbytes-1-i]
		}
		if n.Sign() < 0 && nbytes > 1 && enc[nbytes-1] == 0xff && enc[nbytes-2]&0x80 != 0 {
			enc = enc[:nbytes-1]
		}
	}
	if len(enc) < 256 {
		buf = append(buf, opLong1, byte(len(enc)))
	} else {
		buf = append(buf, opLong4)
		buf = binary.LittleEndian.AppendUint32(buf, uint32(len(enc)))
	}
	return append(buf, enc...)
}

// payloadValue turns an error payload into its wire value: the attribute
// dict, or the args tuple.
func PayloadValue(p zodb.Payload) any {
	if p.Dict != nil {
		d := make(Dict, len(p.Dict))
		for i, f := range p.Dict {
			d[i] = Item{f.Name, f.Value}
		}
		return d
	}
	if p.Args == nil {
		return Tuple{}
	}
	return Tuple(p.Args)
}
