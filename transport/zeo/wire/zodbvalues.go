package wire

import (
	"errors"
	"fmt"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/pickle"
)

// ErrorValue returns the (class_name, payload) pair of a ZEO error reply
// for err. Errors without a Python counterpart travel as
// ZODB.POSException.StorageError with their message.
func ErrorValue(err error) Tuple {
	var re *zodb.RemoteError
	if errors.As(err, &re) {
		return Tuple{re.Class, re.Raw}
	}
	var pe zodb.PythonError
	if errors.As(err, &pe) {
		return Tuple{pe.PythonClass(), pickle.PayloadValue(pe.PythonPayload())}
	}
	return Tuple{"ZODB.POSException.StorageError", Tuple{err.Error()}}
}

// ErrorFromValue rebuilds the error of an error reply's (class, payload)
// pair: a typed zodb error for the classes Python clients know, a
// *zodb.RemoteError carrying the payload unchanged for the rest.
func ErrorFromValue(v any) error {
	pair, ok := Seq(v)
	if !ok || len(pair) != 2 {
		return zodb.NewProtocolError("malformed error reply %s", shortRepr(v))
	}
	class, ok := pair[0].(string)
	if !ok {
		return zodb.NewProtocolError("malformed error reply %s", shortRepr(v))
	}
	payload := pair[1]
	remote := &zodb.RemoteError{Class: class, Raw: payload}
	dict, isDict := payload.(Dict)
	args, isArgs := Seq(payload)
	switch class {
	case "ZODB.POSException.ConflictError", "ZODB.POSException.ReadConflictError":
		if !isDict {
			return remote
		}
		ce := &zodb.ConflictError{Read: class == "ZODB.POSException.ReadConflictError"}
		if m, ok := dict.Get("message"); ok {
			ce.Message, _ = m.(string)
		}
		if o, ok := dict.Get("oid"); ok && o != nil {
			oid, err := AsOID(o)
			if err != nil {
				return remote
			}
			ce.OID = &oid
		}
		if c, ok := dict.Get("class_name"); ok {
			ce.ClassName, _ = c.(string)
		}
		if s, ok := dict.Get("serials"); ok && s != nil {
			ss, ok := Seq(s)
			if !ok || len(ss) != 2 {
				return remote
			}
			a, err1 := AsTID(ss[0])
			b, err2 := AsTID(ss[1])
			if err1 != nil || err2 != nil {
				return remote
			}
			ce.Serials = &[2]zodb.TID{a, b}
		}
		return ce
	case "ZODB.POSException.BTreesConflictError":
		if !isDict {
			return remote
		}
		var be zodb.BTreesConflictError
		for _, f := range []struct {
			k string
			p *int64
		}{{"p1", &be.P1}, {"p2", &be.P2}, {"p3", &be.P3}, {"reason", &be.Reason}} {
			x, _ := dict.Get(f.k)
			n, ok := Int(x)
			if !ok {
				return remote
			}
			*f.p = n
		}
		return &be
	case "ZODB.POSException.POSKeyError":
		if isArgs && len(args) == 1 {
			if oid, err := AsOID(args[0]); err == nil {
				return &zodb.POSKeyError{OID: oid}
			}
		}
		return remote
	case "ZODB.POSException.UndoError":
		if !isDict {
			return remote
		}
		return undoErrorFromDict(dict)
	case "ZODB.POSException.MultipleUndoErrors":
		if !isDict {
			return remote
		}
		errsV, _ := dict.Get("_errs")
		errs, ok := Seq(errsV)
		if !ok {
			return remote
		}
		mu := &zodb.MultipleUndoErrors{}
		for _, e := range errs {
			pair, ok := Seq(e)
			if !ok || len(pair) != 2 {
				return remote
			}
			ue := &zodb.UndoError{Reason: undoReason(pair[1])}
			if oid, err := AsOID(pair[0]); err == nil {
				ue.OID = &oid
			}
			mu.Errs = append(mu.Errs, ue)
		}
		return mu
	}
	if isArgs {
		if e, ok := zodb.ArgsError(class, args); ok {
			return e
		}
	}
	return remote
}

func undoErrorFromDict(d Dict) *zodb.UndoError {
	ue := &zodb.UndoError{}
	r, _ := d.Get("_reason")
	ue.Reason = undoReason(r)
	if o, ok := d.Get("_oid"); ok {
		if oid, err := AsOID(o); err == nil {
			ue.OID = &oid
		}
	}
	return ue
}

// undoReason extracts a reason text from what Python servers put in an
// undo error: text, a nested (class, dict) pair (msgpack) or an UndoError
// instance (pickle).
func undoReason(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case []byte:
		return string(x)
	case Global:
		if d, ok := x.State.(Dict); ok {
			return undoErrorFromDict(d).Reason
		}
		if len(x.Args) > 0 {
			return undoReason(x.Args[0])
		}
	}
	if pair, ok := Seq(v); ok && len(pair) == 2 {
		if d, ok := pair[1].(Dict); ok {
			return undoErrorFromDict(d).Reason
		}
	}
	return Repr(v)
}

// AsBytes returns a bytes argument.
func AsBytes(v any) ([]byte, error) {
	if b, ok := v.([]byte); ok {
		return b, nil
	}
	return nil, fmt.Errorf("expected bytes, got %s", pickle.TypeName(v))
}

// AsText returns a text argument.
func AsText(v any) (string, error) {
	if s, ok := v.(string); ok {
		return s, nil
	}
	return "", fmt.Errorf("expected str, got %s", pickle.TypeName(v))
}

// AsOID returns an 8-byte oid argument.
func AsOID(v any) (zodb.OID, error) {
	b, ok := v.([]byte)
	if !ok || len(b) != 8 {
		return zodb.OID{}, fmt.Errorf("expected an 8-byte oid, got %s", pickle.TypeName(v))
	}
	return zodb.OID(b), nil
}

// AsTID returns an 8-byte tid argument.
func AsTID(v any) (zodb.TID, error) {
	b, ok := v.([]byte)
	if !ok || len(b) != 8 {
		return zodb.TID{}, fmt.Errorf("expected an 8-byte tid, got %s", pickle.TypeName(v))
	}
	return zodb.TID(b), nil
}

// AsOptTID returns a tid argument that may be None (ZeroTID, false).
func AsOptTID(v any) (zodb.TID, bool, error) {
	if v == nil {
		return zodb.ZeroTID, false, nil
	}
	t, err := AsTID(v)
	return t, err == nil, err
}

// AsInt returns an integer argument.
func AsInt(v any) (int64, error) {
	if n, ok := Int(v); ok {
		return n, nil
	}
	return 0, fmt.Errorf("expected int, got %s", pickle.TypeName(v))
}

// AsFloat returns a number argument as float64.
func AsFloat(v any) (float64, error) {
	if f, ok := v.(float64); ok {
		return f, nil
	}
	if n, ok := Int(v); ok {
		return float64(n), nil
	}
	return 0, fmt.Errorf("expected float, got %s", pickle.TypeName(v))
}

// OIDList converts oids to a List of bytes.
func OIDList(oids []zodb.OID) List {
	l := make(List, len(oids))
	for i, o := range oids {
		l[i] = o
	}
	return l
}

// ExtensionFromValue turns the extension argument of tpc_begin (a dict, or
// bytes holding an already pickled dict, or None) into the pickled form
// storages keep.
func ExtensionFromValue(v any) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return nil, nil
	case []byte:
		if len(x) == 0 {
			return nil, nil
		}
		d, err := DecodePickle(x)
		if err != nil {
			return nil, fmt.Errorf("extension bytes are not a pickle: %w", err)
		}
		if _, ok := d.(Dict); !ok {
			return nil, fmt.Errorf("extension bytes do not hold a dict")
		}
		return x, nil
	case Dict:
		if len(x) == 0 {
			return nil, nil
		}
		return AppendPickle(nil, x)
	case Global:
		// A dict subclass reduced to dict(items), as ZODB's tests do:
		// builtins.dict called with a sequence of pairs or a dict.
		if (x.Module == "builtins" || x.Module == "__builtin__") && x.Name == "dict" && x.State == nil && len(x.Args) <= 1 {
			d := Dict{}
			if len(x.Args) == 1 {
				switch a := x.Args[0].(type) {
				case Dict:
					d = a
				default:
					pairs, ok := Seq(a)
					if !ok {
						break
					}
					for _, p := range pairs {
						kv, ok := Seq(p)
						if !ok || len(kv) != 2 {
							return nil, fmt.Errorf("extension: dict() argument is not a sequence of pairs")
						}
						d = append(d, Item{Key: kv[0], Value: kv[1]})
					}
				}
			}
			return ExtensionFromValue(d)
		}
	}
	return nil, fmt.Errorf("extension must be a dict, got %s", pickle.TypeName(v))
}

// ExtensionDict decodes a stored extension into its dict; an extension that
// is not a pickled dict decodes to an empty dict.
func ExtensionDict(ext []byte) Dict {
	if len(ext) == 0 {
		return Dict{}
	}
	v, err := DecodePickle(ext)
	if err != nil {
		return Dict{}
	}
	d, _ := v.(Dict)
	if d == nil {
		return Dict{}
	}
	return d
}
