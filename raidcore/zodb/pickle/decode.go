package pickle

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Limits on decoded values. A frame is already bounded in size, but a
// pickle can make a small frame decode into a huge structure through its
// memo (the same list referenced many times), so building the result counts
// every node it makes.
const (
	MaxDepth = 100
	// minNodeBudget is the node budget of a tiny frame; larger frames get
	// a budget proportional to their length.
	minNodeBudget = 1 << 12
	maxMemo       = 1 << 20
)

var errPickleEOF = errors.New("pickle: pickle ends before STOP")

// Decode decodes one pickle (a whole frame payload) into a Value. It
// understands every opcode Python peers emit for ZEO messages (protocols
// 0-5, memo, globals with REDUCE, NEWOBJ and BUILD, which become Global
// values); it refuses persistent ids, extension codes and sets.
func Decode(data []byte) (any, error) {
	d := pickleDecoder{data: data, budget: minNodeBudget + 4*len(data)}
	d.stack, d.marks = d.stackBuf[:0], d.marksBuf[:0]
	v, err := d.run()
	if err != nil {
		return nil, fmt.Errorf("pickle: bad pickle at byte %d: %w", d.pos, err)
	}
	if d.pos != len(data) {
		return nil, fmt.Errorf("pickle: %d bytes after STOP", len(data)-d.pos)
	}
	return v, nil
}

// Mutable containers while decoding: APPEND and SETITEM must be seen
// through every memo reference, so lists and dicts are pointers until the
// end.
type pList struct{ items []any }
type pDict struct {
	items []Item
	index map[string]int // key fingerprint -> position in items
}
type pGlobal struct {
	g     Global
	state any
}

type pickleDecoder struct {
	data  []byte
	pos   int
	stack []any
	marks []int
	// stackBuf and marksBuf are the first room of stack and marks: a
	// message needs no more, so decoding it does not grow them.
	stackBuf [16]any
	marksBuf [8]int
	memo     map[uint32]any
	budget   int
	// persistent, when set, receives every persistent id (PERSID,
	// BINPERSID); otherwise they are refused. Its result replaces the id.
	persistent func(pid any) (any, error)
	// lenient applies BUILD, APPEND and SETITEM to whatever object is
	// there, as Python's noload does, instead of refusing.
	lenient bool
}

func (d *pickleDecoder) need(n int) ([]byte, error) {
	if n < 0 || d.pos+n > len(d.data) || d.pos+n < d.pos {
		return nil, errPickleEOF
	}
	b := d.data[d.pos : d.pos+n]
	d.pos += n
	return b, nil
}

func (d *pickleDecoder) line() ([]byte, error) {
	for i := d.pos; i < len(d.data); i++ {
		if d.data[i] == '\n' {
			b := d.data[d.pos:i]
			d.pos = i + 1
			return b, nil
		}
	}
	return nil, errPickleEOF
}

func (d *pickleDecoder) push(v any) { d.stack = append(d.stack, v) }

func (d *pickleDecoder) pop() (any, error) {
	if len(d.stack) == 0 || len(d.marks) > 0 && len(d.stack) <= d.marks[len(d.marks)-1] {
		return nil, errors.New("stack underflow")
	}
	v := d.stack[len(d.stack)-1]
	d.stack = d.stack[:len(d.stack)-1]
	return v, nil
}

func (d *pickleDecoder) top() (any, error) {
	if len(d.stack) == 0 || len(d.marks) > 0 && len(d.stack) <= d.marks[len(d.marks)-1] {
		return nil, errors.New("stack underflow")
	}
	return d.stack[len(d.stack)-1], nil
}

// popMark pops everything above the last mark.
func (d *pickleDecoder) popMark() ([]any, error) {
	if len(d.marks) == 0 {
		return nil, errors.New("no mark on the stack")
	}
	m := d.marks[len(d.marks)-1]
	d.marks = d.marks[:len(d.marks)-1]
	items := d.stack[m:]
	d.stack = d.stack[:m]
	return items, nil
}

func (d *pickleDecoder) memoPut(idx uint32) error {
	v, err := d.top()
	if err != nil {
		return err
	}
	if d.memo == nil {
		d.memo = map[uint32]any{}
	}
	if len(d.memo) >= maxMemo {
		return errors.New("memo too large")
	}
	d.memo[idx] = v
	return nil
}

func (d *pickleDecoder) memoGet(idx uint32) error {
	v, ok := d.memo[idx]
	if !ok {
		return fmt.Errorf("memo key %d not found", idx)
	}
	d.push(v)
	return nil
}

func (d *pickleDecoder) run() (any, error) {
	for {
		b, err := d.need(1)
		if err != nil {
			return nil, err
		}
		op := b[0]
		switch op {
		case opStop:
			v, err := d.pop()
			if err != nil {
				return nil, err
			}
			if len(d.stack) != 0 || len(d.marks) != 0 {
				return nil, errors.New("values left on the stack at STOP")
			}
			return d.finish(v, 0)
		case opProto:
			p, err := d.need(1)
			if err != nil {
				return nil, err
			}
			if p[0] > 5 {
				return nil, fmt.Errorf("unsupported pickle protocol %d", p[0])
			}
		case 0x95: // FRAME
			if _, err := d.need(8); err != nil {
				return nil, err
			}
		case opMark:
			d.marks = append(d.marks, len(d.stack))
		case '0': // POP
			if len(d.marks) > 0 && len(d.stack) == d.marks[len(d.marks)-1] {
				d.marks = d.marks[:len(d.marks)-1]
			} else if _, err := d.pop(); err != nil {
				return nil, err
			}
		case '1': // POP_MARK
			if _, err := d.popMark(); err != nil {
				return nil, err
			}
		case '2': // DUP
			v, err := d.top()
			if err != nil {
				return nil, err
			}
			d.push(v)
		case opNone:
			d.push(nil)
		case opNewTrue:
			d.push(true)
		case opNewFalse:
			d.push(false)
		case opBinInt:
			b, err := d.need(4)
			if err != nil {
				return nil, err
			}
			d.push(int64(int32(binary.LittleEndian.Uint32(b))))
		case opBinInt1:
			b, err := d.need(1)
			if err != nil {
				return nil, err
			}
			d.push(int64(b[0]))
		case opBinInt2:
			b, err := d.need(2)
			if err != nil {
				return nil, err
			}
			d.push(int64(binary.LittleEndian.Uint16(b)))
		case opLong1, opLong4:
			var n int
			if op == opLong1 {
				b, err := d.need(1)
				if err != nil {
					return nil, err
				}
				n = int(b[0])
			} else {
				b, err := d.need(4)
				if err != nil {
					return nil, err
				}
				n = int(int32(binary.LittleEndian.Uint32(b)))
				if n < 0 || n > 1<<12 {
					return nil, fmt.Errorf("LONG4 of %d bytes", n)
				}
			}
			b, err := d.need(n)
			if err != nil {
				return nil, err
			}
			d.push(decodeLong(b))
		case 'I': // INT (text); "01"/"00" are True/False in protocol 0
			l, err := d.line()
			if err != nil {
				return nil, err
			}
			switch string(l) {
			case "01":
				d.push(true)
			case "00":
				d.push(false)
			default:
				n, ok := new(big.Int).SetString(string(l), 10)
				if !ok {
					return nil, fmt.Errorf("bad INT %q", l)
				}
				d.push(normInt(n))
			}
		case 'L': // LONG (text)
			l, err := d.line()
			if err != nil {
				return nil, err
			}
			if len(l) > 0 && l[len(l)-1] == 'L' {
				l = l[:len(l)-1]
			}
			n, ok := new(big.Int).SetString(string(l), 10)
			if !ok {
				return nil, fmt.Errorf("bad LONG %q", l)
			}
			d.push(normInt(n))
		case opBinFloat:
			b, err := d.need(8)
			if err != nil {
				return nil, err
			}
			d.push(math.Float64frombits(binary.BigEndian.Uint64(b)))
		case 'F': // FLOAT (text)
			l, err := d.line()
			if err != nil {
				return nil, err
			}
			f, err := strconv.ParseFloat(string(l), 64)
			if err != nil {
				return nil, fmt.Errorf("bad FLOAT %q", l)
			}
			d.push(f)
		case opBinUnicode, 0x8c, 0x8d: // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
			b, err := d.sized(op)
			if err != nil {
				return nil, err
			}
			if v, ok := internedText[string(b)]; ok {
				d.push(v)
				continue
			}
			if !utf8.Valid(b) {
				return nil, errors.New("text is not valid UTF-8")
			}
			d.push(string(b))
		case opBinBytes, opShortBinBytes, 0x8e, 0x96, 'T', 'U': // bytes, Python 2 str, bytearray
			b, err := d.sized(op)
			if err != nil {
				return nil, err
			}
			d.push(append([]byte{}, b...))
		case opEmptyTuple:
			d.push(Tuple{})
		case opTuple:
			items, err := d.popMark()
			if err != nil {
				return nil, err
			}
			d.push(append(Tuple{}, items...))
		case opTuple1, opTuple2, opTuple3:
			n := int(op-opTuple1) + 1
			t := make(Tuple, n)
			for i := n - 1; i >= 0; i-- {
				if t[i], err = d.pop(); err != nil {
					return nil, err
				}
			}
			d.push(t)
		case opEmptyList:
			d.push(&pList{})
		case 'l': // LIST
			items, err := d.popMark()
			if err != nil {
				return nil, err
			}
			d.push(&pList{items: append([]any{}, items...)})
		case opAppend:
			v, err := d.pop()
			if err != nil {
				return nil, err
			}
			if err := d.appendTo([]any{v}); err != nil {
				return nil, err
			}
		case opAppends:
			items, err := d.popMark()
			if err != nil {
				return nil, err
			}
			if err := d.appendTo(items); err != nil {
				return nil, err
			}
		case opEmptyDict:
			d.push(&pDict{})
		case 'd': // DICT
			items, err := d.popMark()
			if err != nil {
				return nil, err
			}
			pd := &pDict{}
			if err := pd.set(items); err != nil {
				return nil, err
			}
			d.push(pd)
		case opSetItem:
			v, err := d.pop()
			if err != nil {
				return nil, err
			}
			k, err := d.pop()
			if err != nil {
				return nil, err
			}
			if err := d.setIn([]any{k, v}); err != nil {
				return nil, err
			}
		case opSetItems:
			items, err := d.popMark()
			if err != nil {
				return nil, err
			}
			if err := d.setIn(items); err != nil {
				return nil, err
			}
		case 'p': // PUT (text)
			l, err := d.line()
			if err != nil {
				return nil, err
			}
			n, err := strconv.ParseUint(string(l), 10, 32)
			if err != nil {
				return nil, fmt.Errorf("bad PUT %q", l)
			}
			if err := d.memoPut(uint32(n)); err != nil {
				return nil, err
			}
		case 'q': // BINPUT
			b, err := d.need(1)
			if err != nil {
				return nil, err
			}
			if err := d.memoPut(uint32(b[0])); err != nil {
				return nil, err
			}
		case 'r': // LONG_BINPUT
			b, err := d.need(4)
			if err != nil {
				return nil, err
			}
			if err := d.memoPut(binary.LittleEndian.Uint32(b)); err != nil {
				return nil, err
			}
		case 0x94: // MEMOIZE
			if err := d.memoPut(uint32(len(d.memo))); err != nil {
				return nil, err
			}
		case 'g': // GET (text)
			l, err := d.line()
			if err != nil {
				return nil, err
			}
			n, err := strconv.ParseUint(string(l), 10, 32)
			if err != nil {
				return nil, fmt.Errorf("bad GET %q", l)
			}
			if err := d.memoGet(uint32(n)); err != nil {
				return nil, err
			}
		case 'h': // BINGET
			b, err := d.need(1)
			if err != nil {
				return nil, err
			}
			if err := d.memoGet(uint32(b[0])); err != nil {
				return nil, err
			}
		case 'j': // LONG_BINGET
			b, err := d.need(4)
			if err != nil {
				return nil, err
			}
			if err := d.memoGet(binary.LittleEndian.Uint32(b)); err != nil {
				return nil, err
			}
		case 'c': // GLOBAL
			mod, err := d.line()
			if err != nil {
				return nil, err
			}
			name, err := d.line()
			if err != nil {
				return nil, err
			}
			d.push(&pGlobal{g: Global{Module: string(mod), Name: string(name)}})
		case 0x93: // STACK_GLOBAL
			name, err := d.pop()
			if err != nil {
				return nil, err
			}
			mod, err := d.pop()
			if err != nil {
				return nil, err
			}
			ms, ok1 := mod.(string)
			ns, ok2 := name.(string)
			if !ok1 || !ok2 {
				return nil, errors.New("STACK_GLOBAL needs two strings")
			}
			d.push(&pGlobal{g: Global{Module: ms, Name: ns}})
		case 'R', 0x81: // REDUCE, NEWOBJ: callable(*args)
			args, err := d.pop()
			if err != nil {
				return nil, err
			}
			if err := d.call(args); err != nil {
				return nil, err
			}
		case 0x92: // NEWOBJ_EX: cls, args, kwargs
			kw, err := d.pop()
			if err != nil {
				return nil, err
			}
			if pd, ok := kw.(*pDict); !ok || len(pd.items) > 0 {
				return nil, errors.New("NEWOBJ_EX with keyword arguments")
			}
			args, err := d.pop()
			if err != nil {
				return nil, err
			}
			if err := d.call(args); err != nil {
				return nil, err
			}
		case 'b': // BUILD
			state, err := d.pop()
			if err != nil {
				return nil, err
			}
			obj, err := d.top()
			if err != nil {
				return nil, err
			}
			g, ok := obj.(*pGlobal)
			if !ok || g.state != nil {
				if d.lenient {
					continue
				}
				return nil, errors.New("BUILD on something that is not a fresh object")
			}
			g.state = state
		case 'P', 'Q': // PERSID (text), BINPERSID
			var pid any
			if op == 'P' {
				l, err := d.line()
				if err != nil {
					return nil, err
				}
				pid = append([]byte{}, l...)
			} else if pid, err = d.pop(); err != nil {
				return nil, err
			}
			if d.persistent == nil {
				return nil, errors.New("persistent id in a pickle that may not have any")
			}
			fin, err := d.finish(pid, 0)
			if err != nil {
				return nil, err
			}
			v, err := d.persistent(fin)
			if err != nil {
				return nil, err
			}
			d.push(v)
		case 'i': // INST module\nname\n, marked args
			mod, err := d.line()
			if err != nil {
				return nil, err
			}
			name, err := d.line()
			if err != nil {
				return nil, err
			}
			args, err := d.popMark()
			if err != nil {
				return nil, err
			}
			d.push(&pGlobal{g: Global{Module: string(mod), Name: string(name), Args: append([]any{}, args...)}})
		case 'o': // OBJ: MARK class args...
			items, err := d.popMark()
			if err != nil {
				return nil, err
			}
			if len(items) == 0 {
				return nil, errors.New("OBJ without a class")
			}
			g, ok := items[0].(*pGlobal)
			if !ok || g.g.Args != nil {
				return nil, errors.New("OBJ of something that is not a class")
			}
			d.push(&pGlobal{g: Global{Module: g.g.Module, Name: g.g.Name, Args: append([]any{}, items[1:]...)}})
		default:
			return nil, fmt.Errorf("unsupported pickle opcode 0x%02x", op)
		}
	}
}

// sized reads a length-prefixed byte string.
func (d *pickleDecoder) sized(op byte) ([]byte, error) {
	var n uint64
	switch op {
	case opShortBinBytes, 0x8c, 'U':
		b, err := d.need(1)
		if err != nil {
			return nil, err
		}
		n = uint64(b[0])
	case opBinUnicode, opBinBytes, 'T':
		b, err := d.need(4)
		if err != nil {
			return nil, err
		}
		n = uint64(binary.LittleEndian.Uint32(b))
		if op == 'T' && int32(n) < 0 {
			return nil, errors.New("negative BINSTRING length")
		}
	default:
		b, err := d.need(8)
		if err != nil {
			return nil, err
		}
		n = binary.LittleEndian.Uint64(b)
	}
	if n > uint64(len(d.data)-d.pos) {
		return nil, errPickleEOF
	}
	return d.need(int(n))
}

func (d *pickleDecoder) appendTo(items []any) error {
	l, err := d.top()
	if err != nil {
		return err
	}
	pl, ok := l.(*pList)
	if !ok {
		if _, isObj := l.(*pGlobal); isObj && d.lenient {
			return nil // list items of a list subclass: noload drops them
		}
		return fmt.Errorf("APPEND to %s", TypeName(l))
	}
	pl.items = append(pl.items, items...)
	return nil
}

func (d *pickleDecoder) setIn(items []any) error {
	t, err := d.top()
	if err != nil {
		return err
	}
	pd, ok := t.(*pDict)
	if !ok {
		if _, isObj := t.(*pGlobal); isObj && d.lenient {
			return nil
		}
		return fmt.Errorf("SETITEM on %s", TypeName(t))
	}
	return pd.set(items)
}

// set stores alternating keys and values, replacing existing keys as
// Python's dict does.
func (pd *pDict) set(kv []any) error {
	if len(kv)%2 != 0 {
		return errors.New("odd number of dict items")
	}
	for i := 0; i < len(kv); i += 2 {
		k := kv[i]
		fp, ok := keyFingerprint(k, 0)
		if !ok {
			return errors.New("unhashable dict key")
		}
		if pd.index == nil {
			pd.index = map[string]int{}
		}
		if j, dup := pd.index[fp]; dup {
			pd.items[j].Value = kv[i+1] // Python keeps the first key, the last value
			continue
		}
		pd.index[fp] = len(pd.items)
		pd.items = append(pd.items, Item{Key: k, Value: kv[i+1]})
	}
	return nil
}

// keyFingerprint gives equal strings for keys Python's dict treats as equal
// (1, 1.0 and True are one key; text and bytes are not), and false for
// unhashable keys.
func keyFingerprint(k any, depth int) (string, bool) {
	if depth > MaxDepth {
		return "", false
	}
	switch x := k.(type) {
	case nil:
		return "N", true
	case string:
		return "s" + x, true
	case []byte:
		return "b" + string(x), true
	case bool:
		if x {
			return "i1", true
		}
		return "i0", true
	case int64:
		return "i" + strconv.FormatInt(x, 10), true
	case uint64:
		return "i" + strconv.FormatUint(x, 10), true
	case *big.Int:
		return "i" + x.String(), true
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1<<63 {
			return "i" + strconv.FormatInt(int64(x), 10), true
		}
		return "f" + strconv.FormatFloat(x, 'g', -1, 64), true
	case Tuple:
		var b strings.Builder
		b.WriteString("t(")
		for _, e := range x {
			fp, ok := keyFingerprint(e, depth+1)
			if !ok {
				return "", false
			}
			b.WriteString(strconv.Itoa(len(fp)))
			b.WriteByte(':')
			b.WriteString(fp)
		}
		b.WriteByte(')')
		return b.String(), true
	case *pGlobal:
		// An object as key: identity, as Python's default hash.
		return fmt.Sprintf("o%p", x), true
	}
	return "", false
}

// call applies REDUCE/NEWOBJ: only globals can be called; the result is a
// Global carrying the arguments.
func (d *pickleDecoder) call(args any) error {
	fn, err := d.pop()
	if err != nil {
		return err
	}
	g, ok := fn.(*pGlobal)
	if !ok || g.g.Args != nil || g.state != nil {
		return errors.New("call of something that is not a global")
	}
	t, ok := args.(Tuple)
	if !ok {
		return errors.New("call arguments are not a tuple")
	}
	d.push(&pGlobal{g: Global{Module: g.g.Module, Name: g.g.Name, Args: append([]any{}, t...)}})
	return nil
}

// finish turns the decoding-time values into Values, within the budget.
func (d *pickleDecoder) finish(v any, depth int) (any, error) {
	if depth > MaxDepth {
		return nil, fmt.Errorf("nested deeper than %d levels", MaxDepth)
	}
	d.budget--
	if d.budget < 0 {
		return nil, errors.New("pickle expands to too many values")
	}
	var err error
	switch x := v.(type) {
	case *pList:
		out := make(List, len(x.items))
		for i, e := range x.items {
			if out[i], err = d.finish(e, depth+1); err != nil {
				return nil, err
			}
		}
		return out, nil
	case *pDict:
		out := make(Dict, len(x.items))
		for i, it := range x.items {
			if out[i].Key, err = d.finish(it.Key, depth+1); err != nil {
				return nil, err
			}
			if out[i].Value, err = d.finish(it.Value, depth+1); err != nil {
				return nil, err
			}
		}
		return out, nil
	case Tuple:
		// Every Tuple here was made by this decoder (TUPLE, TUPLE1-3):
		// finished in place, and the interface value v is returned as
		// it is, without a copy or a new boxing. A tuple the memo shares
		// is finished once more, to the same values.
		for i, e := range x {
			if x[i], err = d.finish(e, depth+1); err != nil {
				return nil, err
			}
		}
		return v, nil
	case *pGlobal:
		g := Global{Module: x.g.Module, Name: x.g.Name}
		if x.g.Args != nil {
			g.Args = make([]any, len(x.g.Args))
			for i, e := range x.g.Args {
				if g.Args[i], err = d.finish(e, depth+1); err != nil {
					return nil, err
				}
			}
		}
		if x.state != nil {
			if g.State, err = d.finish(x.state, depth+1); err != nil {
				return nil, err
			}
		}
		return g, nil
	case []byte:
		d.budget -= len(x) / 64
		return v, nil
	}
	return v, nil
}

// decodeLong decodes a little-endian two's complement integer.
func decodeLong(b []byte) any {
	if len(b) == 0 {
		return int64(0)
	}
	if len(b) <= 8 {
		var u uint64
		for i := len(b) - 1; i >= 0; i-- {
			u = u<<8 | uint64(b[i])
		}
		if b[len(b)-1]&0x80 != 0 { // negative: sign-extend
			if len(b) < 8 {
				u |= math.MaxUint64 << (8 * uint(len(b)))
			}
			return int64(u)
		}
		if len(b) == 8 || u <= math.MaxInt64 {
			return int64(u)
		}
	}
	if len(b) == 9 && b[8] == 0 {
		var u uint64
		for i := 7; i >= 0; i-- {
			u = u<<8 | uint64(b[i])
		}
		return normInt(new(big.Int).SetUint64(u))
	}
	be := make([]byte, len(b))
	for i := range b {
		be[i] = b[len(b)-1-i]
	}
	n := new(big.Int).SetBytes(be)
	if b[len(b)-1]&0x80 != 0 {
		n.Sub(n, new(big.Int).Lsh(big.NewInt(1), uint(8*len(b))))
	}
	return normInt(n)
}

// normInt returns the narrowest representation: int64, uint64, *big.Int.
func normInt(n *big.Int) any {
	if n.IsInt64() {
		return n.Int64()
	}
	if n.IsUint64() {
		return n.Uint64()
	}
	return n
}

// internedText holds, already boxed, the texts that nearly every ZEO
// message carries (method names, ZODB interface names): decoding one of
// them allocates nothing. Read-only after init.
var internedText = func() map[string]any {
	m := map[string]any{}
	for _, s := range []string{
		"loadBefore", "loadSerial", "load", "ping", "lastTransaction", "new_oids", "tpc_begin", "storea",
		"vote", "tpc_finish", "tpc_abort", "invalidateTransaction", "checkCurrentSerialInTransaction",
		"deleteObject", "restorea", "undoa", "sendBlob", "storeBlobStart", "storeBlobChunk", "storeBlobEnd",
		"storeBlobShared", "receiveBlobStart", "receiveBlobChunk", "receiveBlobStop", "history", "undoLog",
		"undoInfo", "iterator_start", "iterator_next", "iterator_record_start", "iterator_record_next",
		"iterator_gc", "record_iternext", "get_info", "register", "info", ".reply", "serialnos",
		"zeoVerify", "endZeoVerify", "getInvalidations", "pack", "supportsUndo", "get_size",
		"", " ", "1", "ZODB.interfaces",
	} {
		m[s] = s
	}
	return m
}()
