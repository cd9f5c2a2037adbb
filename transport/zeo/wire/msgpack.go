package wire

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"math/big"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/pickle"
)

// AppendMsgpack appends the msgpack encoding of v to buf, as Python's
// msgpack.packb(v, use_bin_type=True) would write it: bytes as bin, text as
// str, tuples and lists as arrays, ints in their smallest form.
func AppendMsgpack(buf []byte, v any) ([]byte, error) {
	b := bytes.NewBuffer(buf)
	enc := msgpack.NewEncoder(b)
	if err := encodeMsgpack(enc, b, v, 0); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func encodeMsgpack(enc *msgpack.Encoder, b *bytes.Buffer, v any, depth int) error {
	if depth > pickle.MaxNesting {
		return fmt.Errorf("wire: value nested deeper than %d levels", pickle.MaxNesting)
	}
	switch x := v.(type) {
	case nil:
		return enc.EncodeNil()
	case bool:
		return enc.EncodeBool(x)
	case int:
		return enc.EncodeInt(int64(x))
	case int64:
		return enc.EncodeInt(x)
	case uint64:
		return enc.EncodeUint(x)
	case *big.Int:
		if x.IsInt64() {
			return enc.EncodeInt(x.Int64())
		}
		if x.IsUint64() {
			return enc.EncodeUint(x.Uint64())
		}
		return fmt.Errorf("wire: integer %s does not fit msgpack", x)
	case float64:
		return enc.EncodeFloat64(x)
	case string:
		return enc.EncodeString(x)
	case []byte:
		return encodeMsgpackBin(enc, b, x)
	case zodb.OID:
		return encodeMsgpackBin(enc, b, x[:])
	case zodb.TID:
		return encodeMsgpackBin(enc, b, x[:])
	case Tuple:
		return encodeMsgpackArray(enc, b, x, depth)
	case List:
		return encodeMsgpackArray(enc, b, x, depth)
	case []any:
		return encodeMsgpackArray(enc, b, x, depth)
	case Dict:
		if err := enc.EncodeMapLen(len(x)); err != nil {
			return err
		}
		for _, it := range x {
			if err := encodeMsgpack(enc, b, it.Key, depth+1); err != nil {
				return err
			}
			if err := encodeMsgpack(enc, b, it.Value, depth+1); err != nil {
				return err
			}
		}
		return nil
	case *zodb.RemoteError:
		return encodeMsgpackArray(enc, b, []any{x.Class, x.Raw}, depth)
	case zodb.PythonError:
		return encodeMsgpackArray(enc, b, []any{x.PythonClass(), pickle.PayloadValue(x.PythonPayload())}, depth)
	case Global:
		return fmt.Errorf("wire: cannot send global %s.%s in msgpack", x.Module, x.Name)
	}
	return fmt.Errorf("wire: cannot msgpack %T", v)
}

func encodeMsgpackBin(enc *msgpack.Encoder, b *bytes.Buffer, data []byte) error {
	// EncodeBytes would turn a nil slice into nil; bytes are bytes.
	if err := enc.EncodeBytesLen(len(data)); err != nil {
		return err
	}
	b.Write(data)
	return nil
}

func encodeMsgpackArray(enc *msgpack.Encoder, b *bytes.Buffer, a []any, depth int) error {
	if err := enc.EncodeArrayLen(len(a)); err != nil {
		return err
	}
	for _, e := range a {
		if err := encodeMsgpack(enc, b, e, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// DecodeMsgpack decodes one msgpack value (a whole frame payload) the way
// ZEO does (raw=False, use_list=False): arrays become Tuples.
func DecodeMsgpack(data []byte) (any, error) {
	r := bytes.NewReader(data)
	dec := msgpack.NewDecoder(r)
	v, err := decodeMsgpack(dec, r, 0)
	if err != nil {
		return nil, fmt.Errorf("wire: bad msgpack: %w", err)
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("wire: bad msgpack: %d bytes after the value", r.Len())
	}
	return v, nil
}

func decodeMsgpack(dec *msgpack.Decoder, r *bytes.Reader, depth int) (any, error) {
	if depth > pickle.MaxDepth {
		return nil, fmt.Errorf("nested deeper than %d levels", pickle.MaxDepth)
	}
	c, err := dec.PeekCode()
	if err != nil {
		return nil, err
	}
	switch {
	case c == msgpcode.Nil:
		return nil, dec.DecodeNil()
	case c == msgpcode.True || c == msgpcode.False:
		return dec.DecodeBool()
	case msgpcode.IsFixedNum(c), c == msgpcode.Int8, c == msgpcode.Int16, c == msgpcode.Int32, c == msgpcode.Int64,
		c == msgpcode.Uint8, c == msgpcode.Uint16, c == msgpcode.Uint32:
		return dec.DecodeInt64()
	case c == msgpcode.Uint64:
		n, err := dec.DecodeUint64()
		if err != nil {
			return nil, err
		}
		if n <= math.MaxInt64 {
			return int64(n), nil
		}
		return n, nil
	case c == msgpcode.Float:
		f, err := dec.DecodeFloat32()
		return float64(f), err
	case c == msgpcode.Double:
		return dec.DecodeFloat64()
	case msgpcode.IsString(c), msgpcode.IsBin(c):
		n, err := dec.DecodeBytesLen()
		if err != nil {
			return nil, err
		}
		if n < 0 || n > r.Len() {
			return nil, io.ErrUnexpectedEOF
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(r, data); err != nil {
			return nil, err
		}
		if msgpcode.IsBin(c) {
			return data, nil
		}
		return string(data), nil
	case msgpcode.IsFixedArray(c), c == msgpcode.Array16, c == msgpcode.Array32:
		n, err := dec.DecodeArrayLen()
		if err != nil {
			return nil, err
		}
		if n < 0 || n > r.Len() {
			return nil, io.ErrUnexpectedEOF
		}
		out := make(Tuple, n)
		for i := range out {
			if out[i], err = decodeMsgpack(dec, r, depth+1); err != nil {
				return nil, err
			}
		}
		return out, nil
	case msgpcode.IsFixedMap(c), c == msgpcode.Map16, c == msgpcode.Map32:
		n, err := dec.DecodeMapLen()
		if err != nil {
			return nil, err
		}
		if n < 0 || 2*n > r.Len() {
			return nil, io.ErrUnexpectedEOF
		}
		out := make(Dict, n)
		for i := range out {
			if out[i].Key, err = decodeMsgpack(dec, r, depth+1); err != nil {
				return nil, err
			}
			switch out[i].Key.(type) {
			case string, []byte:
			default:
				// Python's unpackb only accepts str and bytes keys.
				return nil, fmt.Errorf("map key of type %T", out[i].Key)
			}
			if out[i].Value, err = decodeMsgpack(dec, r, depth+1); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("unsupported msgpack code 0x%02x", c)
}
