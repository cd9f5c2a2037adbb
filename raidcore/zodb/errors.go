package zodb

import (
	"errors"
	"fmt"
	"strings"
)

// PythonError is implemented by every error that has a Python counterpart a
// ZEO peer can receive. The wire layer turns it into a ZEO error reply
// (class name, payload) and back.
type PythonError interface {
	error
	// PythonClass is the dotted class path, e.g.
	// "ZODB.POSException.ConflictError".
	PythonClass() string
	// PythonPayload is what the Python server would send: the instance's
	// attribute dict when it has attributes, otherwise its args tuple.
	PythonPayload() Payload
}

// Payload is the second element of a ZEO error reply.
type Payload struct {
	// Dict, when not nil, is the exception's attribute dict in order.
	Dict []Field
	// Args is the args tuple, used when Dict is nil.
	Args []any
}

// Field is one attribute of an exception. Values are nil, bool, int, int64,
// float64, string (Python text), []byte (Python bytes), OID, TID (bytes),
// []any (a tuple), a nested PythonError, or a value decoded from the wire.
type Field struct {
	Name  string
	Value any
}

const posException = "ZODB.POSException."

// oidRepr formats an oid like ZODB.utils.oid_repr: 0x01, 0x0100, ...
func oidRepr(b [8]byte) string {
	s := strings.TrimLeft(fmt.Sprintf("%x", b[:]), "0")
	if len(s)%2 == 1 {
		s = "0" + s
	}
	if s == "" {
		s = "00"
	}
	return "0x" + s
}

// POSKeyError: the object (or that revision of it) does not exist.
type POSKeyError struct {
	OID OID
}

func (e *POSKeyError) Error() string       { return "POSKeyError: " + oidRepr(e.OID) }
func (e *POSKeyError) PythonClass() string { return posException + "POSKeyError" }
func (e *POSKeyError) PythonPayload() Payload {
	return Payload{Args: []any{e.OID}}
}

// ConflictError is a write conflict (ConflictError) or, with Read set, a
// read conflict (ReadConflictError). Clients treat both as transient and
// retry the transaction.
type ConflictError struct {
	Read bool
	// Message is the message; empty means the Python default.
	Message string
	OID     *OID
	// ClassName of the object, when known.
	ClassName string
	// Serials are (committed, read), when known.
	Serials *[2]TID
}

// NewConflictError returns a write conflict for oid between the committed
// tid and the tid the transaction read.
func NewConflictError(oid OID, committed, read TID) *ConflictError {
	return &ConflictError{OID: &oid, Serials: &[2]TID{committed, read}}
}

// NewReadConflictError returns a read conflict for oid.
func NewReadConflictError(oid OID, current, read TID) *ConflictError {
	return &ConflictError{Read: true, OID: &oid, Serials: &[2]TID{current, read}}
}

func (e *ConflictError) message() string {
	if e.Message != "" {
		return e.Message
	}
	if e.Read {
		return "database read conflict error"
	}
	return "database conflict error"
}

func (e *ConflictError) Error() string {
	var extras []string
	if e.OID != nil {
		extras = append(extras, "oid "+oidRepr(*e.OID))
	}
	if e.ClassName != "" {
		extras = append(extras, "class "+e.ClassName)
	}
	if e.Serials != nil {
		extras = append(extras, "serial this txn started with "+e.Serials[1].String(),
			"serial currently committed "+e.Serials[0].String())
	}
	if len(extras) == 0 {
		return e.message()
	}
	return e.message() + " (" + strings.Join(extras, ", ") + ")"
}

func (e *ConflictError) PythonClass() string {
	if e.Read {
		return posException + "ReadConflictError"
	}
	return posException + "ConflictError"
}

func (e *ConflictError) PythonPayload() Payload {
	var oid, className, serials any
	if e.OID != nil {
		oid = *e.OID
	}
	if e.ClassName != "" {
		className = e.ClassName
	}
	if e.Serials != nil {
		serials = []any{e.Serials[0], e.Serials[1]}
	}
	return Payload{Dict: []Field{
		{"message", e.message()}, {"oid", oid}, {"class_name", className}, {"serials", serials},
	}}
}

// BTreesConflictError is raised by BTrees conflict resolution.
type BTreesConflictError struct {
	P1, P2, P3, Reason int64
}

func (e *BTreesConflictError) Error() string {
	return fmt.Sprintf("BTrees conflict error at %d/%d/%d: reason %d", e.P1, e.P2, e.P3, e.Reason)
}
func (e *BTreesConflictError) PythonClass() string { return posException + "BTreesConflictError" }
func (e *BTreesConflictError) PythonPayload() Payload {
	return Payload{Dict: []Field{{"p1", e.P1}, {"p2", e.P2}, {"p3", e.P3}, {"reason", e.Reason}}}
}

// argsError is the shape of every POSException that carries only args.
type argsError struct {
	class string
	Args  []any
}

func (e *argsError) PythonClass() string    { return e.class }
func (e *argsError) PythonPayload() Payload { return Payload{Args: e.Args} }

func (e *argsError) Error() string {
	name := e.class[strings.LastIndexByte(e.class, '.')+1:]
	switch len(e.Args) {
	case 0:
		return name
	case 1:
		if s, ok := e.Args[0].(string); ok {
			return name + ": " + s
		}
	}
	parts := make([]string, len(e.Args))
	for i, a := range e.Args {
		parts[i] = fmt.Sprint(a)
	}
	return name + ": " + strings.Join(parts, ", ")
}

// ReadOnlyError: a write on a read-only storage or connection.
type ReadOnlyError struct{ argsError }

// NewReadOnlyError returns a ReadOnlyError.
func NewReadOnlyError() *ReadOnlyError {
	return &ReadOnlyError{argsError{class: posException + "ReadOnlyError"}}
}

// StorageTransactionError: a two-phase commit call for the wrong (or no)
// transaction, or an explicit tid that does not increase.
type StorageTransactionError struct{ argsError }

// NewStorageTransactionError returns a StorageTransactionError with a
// formatted message.
func NewStorageTransactionError(format string, a ...any) *StorageTransactionError {
	return &StorageTransactionError{argsError{class: posException + "StorageTransactionError", Args: []any{fmt.Sprintf(format, a...)}}}
}

// StorageError is the generic storage failure.
type StorageError struct{ argsError }

// NewStorageError returns a StorageError with a formatted message.
func NewStorageError(format string, a ...any) *StorageError {
	return &StorageError{argsError{class: posException + "StorageError", Args: []any{fmt.Sprintf(format, a...)}}}
}

// Unsupported: the storage does not implement the operation.
type Unsupported struct{ argsError }

// NewUnsupported returns an Unsupported error.
func NewUnsupported(format string, a ...any) *Unsupported {
	return &Unsupported{argsError{class: posException + "Unsupported", Args: []any{fmt.Sprintf(format, a...)}}}
}

// ValueError is Python's builtins.ValueError (unknown storage, bad
// arguments).
type ValueError struct{ argsError }

// NewValueError returns a ValueError.
func NewValueError(format string, a ...any) *ValueError {
	return &ValueError{argsError{class: "builtins.ValueError", Args: []any{fmt.Sprintf(format, a...)}}}
}

// TypeError is Python's builtins.TypeError (arguments of the wrong type or
// number).
type TypeError struct{ argsError }

// NewTypeError returns a TypeError.
func NewTypeError(format string, a ...any) *TypeError {
	return &TypeError{argsError{class: "builtins.TypeError", Args: []any{fmt.Sprintf(format, a...)}}}
}

// ClientDisconnected: the ZEO connection is gone (transient: the operation
// may be retried after reconnecting).
type ClientDisconnected struct{ argsError }

// NewClientDisconnected returns a ClientDisconnected error.
func NewClientDisconnected(format string, a ...any) *ClientDisconnected {
	return &ClientDisconnected{argsError{class: "ZEO.Exceptions.ClientDisconnected", Args: []any{fmt.Sprintf(format, a...)}}}
}

// ProtocolError: the peer violated the ZEO protocol.
type ProtocolError struct{ argsError }

// NewProtocolError returns a ProtocolError.
func NewProtocolError(format string, a ...any) *ProtocolError {
	return &ProtocolError{argsError{class: "ZEO.Exceptions.ProtocolError", Args: []any{fmt.Sprintf(format, a...)}}}
}

// UndoError: one object of an undo cannot be undone.
type UndoError struct {
	Reason string
	OID    *OID
}

func (e *UndoError) Error() string {
	if e.OID != nil {
		return oidRepr(*e.OID) + " " + e.Reason
	}
	return e.Reason
}
func (e *UndoError) PythonClass() string { return posException + "UndoError" }
func (e *UndoError) PythonPayload() Payload {
	var oid any
	if e.OID != nil {
		oid = *e.OID
	}
	return Payload{Dict: []Field{{"_reason", e.Reason}, {"_oid", oid}}}
}

// MultipleUndoErrors: several objects of an undo cannot be undone. Servers
// report every undo failure this way, as FileStorage does.
type MultipleUndoErrors struct {
	Errs []*UndoError
}

func (e *MultipleUndoErrors) Error() string {
	parts := make([]string, len(e.Errs))
	for i, u := range e.Errs {
		parts[i] = u.Error()
	}
	return strings.Join(parts, " ")
}
func (e *MultipleUndoErrors) PythonClass() string { return posException + "MultipleUndoErrors" }

// PythonPayload mirrors what FileStorage's MultipleUndoErrors pickles to:
// UndoError.__init__ stores its two args as _reason and _oid, and
// MultipleUndoErrors passes the first (oid, error) pair as those args.
func (e *MultipleUndoErrors) PythonPayload() Payload {
	var reason, oid any
	errs := make([]any, len(e.Errs))
	for i, u := range e.Errs {
		var o any
		if u.OID != nil {
			o = *u.OID
		}
		if i == 0 {
			reason, oid = o, u.Reason
		}
		// (oid, reason text): the Python client formats each pair as
		// "Undo error <oid>: <reason>".
		errs[i] = []any{o, u.Reason}
	}
	return Payload{Dict: []Field{{"_reason", reason}, {"_oid", oid}, {"_errs", errs}}}
}

// ArgsError returns the typed error for a Python class that carries only
// args (ReadOnlyError, StorageTransactionError, StorageError, Unsupported,
// ValueError, TypeError, ClientDisconnected, ProtocolError), or false for
// other classes.
func ArgsError(class string, args []any) (PythonError, bool) {
	a := argsError{class: class, Args: args}
	switch class {
	case posException + "ReadOnlyError":
		return &ReadOnlyError{a}, true
	case posException + "StorageTransactionError":
		return &StorageTransactionError{a}, true
	case posException + "StorageError":
		return &StorageError{a}, true
	case posException + "Unsupported":
		return &Unsupported{a}, true
	case "builtins.ValueError", "exceptions.ValueError":
		return &ValueError{a}, true
	case "builtins.TypeError", "exceptions.TypeError":
		return &TypeError{a}, true
	case "ZEO.Exceptions.ClientDisconnected":
		return &ClientDisconnected{a}, true
	case "ZEO.Exceptions.ProtocolError":
		return &ProtocolError{a}, true
	}
	return nil, false
}

// RemoteError is an error reply of a class this package does not model,
// kept verbatim so that a proxy can pass it on unchanged.
type RemoteError struct {
	Class string
	// Raw is the decoded payload as it came off the wire.
	Raw any
}

func (e *RemoteError) Error() string       { return fmt.Sprintf("%s: %v", e.Class, e.Raw) }
func (e *RemoteError) PythonClass() string { return e.Class }

// PythonPayload returns Raw as the args tuple; the wire layer recognises
// RemoteError and encodes Raw unchanged instead.
func (e *RemoteError) PythonPayload() Payload { return Payload{Args: []any{e.Raw}} }

// OutcomeUnknownError reports that a connection broke after tpc_finish was
// sent and before its reply arrived: the transaction may or may not have
// committed. Callers resolve it by looking at the storage after
// reconnecting.
type OutcomeUnknownError struct {
	Err error
}

func (e *OutcomeUnknownError) Error() string {
	return "transaction outcome unknown (connection lost during tpc_finish): " + e.Err.Error()
}
func (e *OutcomeUnknownError) Unwrap() error { return e.Err }

// IsConflict reports whether err is a (read) conflict, which clients retry.
func IsConflict(err error) bool {
	var ce *ConflictError
	var be *BTreesConflictError
	return errors.As(err, &ce) || errors.As(err, &be)
}

// IsPOSKeyError reports whether err is a POSKeyError.
func IsPOSKeyError(err error) bool {
	var pe *POSKeyError
	return errors.As(err, &pe)
}
