package pickle

import (
	"bytes"
	"fmt"
	"math/big"
	"strings"
)

// Value is a decoded wire value. It is one of:
//
//	nil                Python None
//	bool               bool
//	int64              int (fits 64 bits)
//	uint64             int above math.MaxInt64 (msgpack uint64, large ids)
//	*big.Int           any other int (pickle only)
//	float64            float
//	string             str (text)
//	[]byte             bytes
//	Tuple              tuple (pickle); every msgpack array decodes as Tuple
//	List               list (pickle)
//	Dict               dict, in wire order
//	Global             a pickled global/object (only ZopeUndo.Prefix is accepted from peers)
//
// Encoders also accept int, zodb.OID and zodb.TID (as bytes), []any (as a
// tuple) and zodb error values inside error payloads.
type Value = any

// Tuple is a Python tuple.
type Tuple []any

// List is a Python list.
type List []any

// Item is one key/value pair of a Dict.
type Item struct {
	Key   any
	Value any
}

// Dict is a Python dict with its items in order.
type Dict []Item

// Get returns the value for a text key.
func (d Dict) Get(key string) (any, bool) {
	for _, it := range d {
		if k, ok := it.Key.(string); ok && k == key {
			return it.Value, true
		}
	}
	return nil, false
}

// Global is a pickled object built from a global (class) reference:
// Module.Name called with Args, with State applied (BUILD), if any. The
// decoder produces it; the encoder refuses it, because Python clients only
// unpickle a few whitelisted globals.
type Global struct {
	Module, Name string
	Args         []any
	State        any
}

// Seq returns the elements of a Tuple or List.
func Seq(v any) ([]any, bool) {
	switch s := v.(type) {
	case Tuple:
		return s, true
	case List:
		return s, true
	case []any:
		return s, true
	}
	return nil, false
}

// Int returns an integer value as int64 (bools count, as in Python).
func Int(v any) (int64, bool) {
	switch n := v.(type) {
	case int64:
		return n, true
	case int:
		return int64(n), true
	case bool:
		if n {
			return 1, true
		}
		return 0, true
	case uint64:
		if n <= 1<<63-1 {
			return int64(n), true
		}
	case *big.Int:
		if n.IsInt64() {
			return n.Int64(), true
		}
	}
	return 0, false
}

// Truth is Python's truthiness for the values a flag can take.
func Truth(v any) bool {
	switch x := v.(type) {
	case nil:
		return false
	case bool:
		return x
	case int64:
		return x != 0
	case uint64:
		return x != 0
	case *big.Int:
		return x.Sign() != 0
	case float64:
		return x != 0
	case string:
		return x != ""
	case []byte:
		return len(x) != 0
	}
	if s, ok := Seq(v); ok {
		return len(s) != 0
	}
	if d, ok := v.(Dict); ok {
		return len(d) != 0
	}
	return true
}

// Equal compares two values structurally. Dicts compare by content, in any
// order, because the pickle decoder cannot keep dict order. Integers compare
// by value whatever their Go type.
func Equal(a, b any) bool {
	if x, ok := Int(a); ok {
		if _, isBool := a.(bool); !isBool {
			if _, bIsBool := b.(bool); !bIsBool {
				y, ok := Int(b)
				return ok && x == y
			}
		}
	}
	switch x := a.(type) {
	case nil:
		return b == nil
	case bool:
		y, ok := b.(bool)
		return ok && x == y
	case *big.Int:
		y, ok := b.(*big.Int)
		return ok && x.Cmp(y) == 0
	case uint64:
		y, ok := b.(uint64)
		return ok && x == y
	case float64:
		// Structural: NaN equals NaN here.
		y, ok := b.(float64)
		return ok && (x == y || x != x && y != y)
	case string:
		y, ok := b.(string)
		return ok && x == y
	case []byte:
		y, ok := b.([]byte)
		return ok && bytes.Equal(x, y)
	case Tuple:
		y, ok := b.(Tuple)
		return ok && seqEqual(x, y)
	case List:
		y, ok := b.(List)
		return ok && seqEqual(x, y)
	case Dict:
		y, ok := b.(Dict)
		if !ok || len(x) != len(y) {
			return false
		}
		used := make([]bool, len(y))
	outer:
		for _, it := range x {
			for j, jt := range y {
				if !used[j] && Equal(it.Key, jt.Key) && Equal(it.Value, jt.Value) {
					used[j] = true
					continue outer
				}
			}
			return false
		}
		return true
	case Global:
		y, ok := b.(Global)
		return ok && x.Module == y.Module && x.Name == y.Name && seqEqual(x.Args, y.Args) && Equal(x.State, y.State)
	}
	return false
}

func seqEqual(a, b []any) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// Repr formats a value roughly like Python's repr, for logs and test
// failures.
func Repr(v any) string {
	var sb strings.Builder
	repr(&sb, v)
	return sb.String()
}

func repr(sb *strings.Builder, v any) {
	switch x := v.(type) {
	case nil:
		sb.WriteString("None")
	case bool:
		if x {
			sb.WriteString("True")
		} else {
			sb.WriteString("False")
		}
	case string:
		fmt.Fprintf(sb, "%q", x)
	case []byte:
		fmt.Fprintf(sb, "b%q", x)
	case Tuple:
		sb.WriteByte('(')
		for i, e := range x {
			if i > 0 {
				sb.WriteString(", ")
			}
			repr(sb, e)
		}
		if len(x) == 1 {
			sb.WriteByte(',')
		}
		sb.WriteByte(')')
	case List:
		sb.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				sb.WriteString(", ")
			}
			repr(sb, e)
		}
		sb.WriteByte(']')
	case Dict:
		sb.WriteByte('{')
		for i, it := range x {
			if i > 0 {
				sb.WriteString(", ")
			}
			repr(sb, it.Key)
			sb.WriteString(": ")
			repr(sb, it.Value)
		}
		sb.WriteByte('}')
	case Global:
		fmt.Fprintf(sb, "%s.%s(", x.Module, x.Name)
		for i, e := range x.Args {
			if i > 0 {
				sb.WriteString(", ")
			}
			repr(sb, e)
		}
		sb.WriteByte(')')
		if x.State != nil {
			sb.WriteString(".__setstate__(")
			repr(sb, x.State)
			sb.WriteByte(')')
		}
	default:
		fmt.Fprintf(sb, "%v", x)
	}
}

// NewDict builds a Dict from alternating keys and values.
func NewDict(kv ...any) Dict {
	if len(kv)%2 != 0 {
		panic("wire.NewDict: odd number of arguments")
	}
	d := make(Dict, 0, len(kv)/2)
	for i := 0; i < len(kv); i += 2 {
		d = append(d, Item{Key: kv[i], Value: kv[i+1]})
	}
	return d
}

// TypeName names a value's Python type, for error messages.
func TypeName(v any) string {
	switch x := v.(type) {
	case nil:
		return "None"
	case bool:
		return "bool"
	case int64, uint64, int:
		return "int"
	case float64:
		return "float"
	case string:
		return "str"
	case []byte:
		return fmt.Sprintf("bytes of length %d", len(x))
	case Tuple:
		return "tuple"
	case List:
		return "list"
	case Dict:
		return "dict"
	case Global:
		return x.Module + "." + x.Name
	}
	return fmt.Sprintf("%T", v)
}
