package fsm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// Type is a command's type: the first byte of a log entry. Numbers are
// never reused; a retired command keeps its number. Types with
// IgnoreUnknown set may be skipped by a version that does not know them;
// any other unknown type stops the node (Apply panics) rather than let
// its state diverge.
type Type byte

// IgnoreUnknown marks a command type that older versions may skip.
const IgnoreUnknown Type = 128

// The command types.
const (
	TypeStartStorage    Type = 1
	TypeUpdateTable     Type = 2
	TypeAddBackend      Type = 3
	TypeRemoveBackend   Type = 4
	TypeRaiseTIDCeiling Type = 5
	TypeReserveOIDs     Type = 6
	TypeAdvanceOIDs     Type = 7
	TypeRegisterProxy   Type = 8
	TypeDeregisterProxy Type = 9
	TypeSetMaxLease     Type = 10
)

// Command is one change of the state, carried in one log entry.
type Command interface {
	Type() Type
}

// StartStorage creates a storage's state with the table the first proxy
// derived from its backends, or, for a storage that exists, only raises
// its ceilings to the floors (a proxy that starts later takes the table
// as it is). Idempotent.
type StartStorage struct {
	Storage string         `json:"storage"`
	Rows    map[string]Row `json:"rows"`
	// TIDFloor and OIDFloor are the highest tid and oid any backend
	// holds: no tid or oid at or below them is ever handed out.
	TIDFloor uint64 `json:"tid_floor"`
	OIDFloor uint64 `json:"oid_floor"`
}

// UpdateTable is a compare-and-set of a storage's table: Expect names
// every backend of the table with the version the change was decided on
// (so that the rules raidcore checked against that table still hold), and
// Rows the new rows of the backends that change. Refused with ErrStale
// when any version differs or the backends are not the same, and with
// ErrLastOptimal when the table would lose its last optimal backend and
// AllowNoOptimal is not set. A retry after a lost leadership is refused
// as stale if the first attempt was applied.
type UpdateTable struct {
	Storage        string            `json:"storage"`
	Expect         map[string]uint64 `json:"expect"`
	Rows           map[string]Row    `json:"rows"`
	AllowNoOptimal bool              `json:"allow_no_optimal,omitempty"`
}

// AddBackend adds a backend to a storage's table.
type AddBackend struct {
	Storage string `json:"storage"`
	Backend string `json:"backend"`
	Row     Row    `json:"row"`
}

// RemoveBackend removes a backend from a storage's table; never the last
// optimal one.
type RemoveBackend struct {
	Storage string `json:"storage"`
	Backend string `json:"backend"`
}

// RaiseTIDCeiling raises a storage's tid ceiling to To (never lowers
// it). Idempotent.
type RaiseTIDCeiling struct {
	Storage string `json:"storage"`
	To      uint64 `json:"to"`
}

// ReserveOIDs reserves Count oids for a proxy, above the ceiling and
// above Floor. The result is the OIDRange. A retry reserves another
// range: oids are wasted, never handed out twice.
type ReserveOIDs struct {
	Storage string `json:"storage"`
	Proxy   string `json:"proxy"`
	Count   uint64 `json:"count"`
	Floor   uint64 `json:"floor,omitempty"`
}

// AdvanceOIDs raises a storage's oid ceiling to Floor (a client stored
// an oid it did not get from the cluster); when that raises it, every
// proxy's reserved range is used up. Idempotent.
type AdvanceOIDs struct {
	Storage string `json:"storage"`
	Floor   uint64 `json:"floor"`
}

// RegisterProxy adds a proxy to the registry or updates its addresses.
type RegisterProxy struct {
	Proxy Proxy `json:"proxy"`
}

// DeregisterProxy removes a proxy from the registry. Idempotent.
type DeregisterProxy struct {
	ID string `json:"id"`
}

// SetMaxLease raises the longest lease a leader may grant (it never
// lowers it: a lease granted under the old maximum may still run).
type SetMaxLease struct {
	MaxLease time.Duration `json:"max_lease"`
}

func (StartStorage) Type() Type    { return TypeStartStorage }
func (UpdateTable) Type() Type     { return TypeUpdateTable }
func (AddBackend) Type() Type      { return TypeAddBackend }
func (RemoveBackend) Type() Type   { return TypeRemoveBackend }
func (RaiseTIDCeiling) Type() Type { return TypeRaiseTIDCeiling }
func (ReserveOIDs) Type() Type     { return TypeReserveOIDs }
func (AdvanceOIDs) Type() Type     { return TypeAdvanceOIDs }
func (RegisterProxy) Type() Type   { return TypeRegisterProxy }
func (DeregisterProxy) Type() Type { return TypeDeregisterProxy }
func (SetMaxLease) Type() Type     { return TypeSetMaxLease }

// newCommand returns a zero command of type t, or nil for an unknown
// type.
func newCommand(t Type) Command {
	switch t {
	case TypeStartStorage:
		return &StartStorage{}
	case TypeUpdateTable:
		return &UpdateTable{}
	case TypeAddBackend:
		return &AddBackend{}
	case TypeRemoveBackend:
		return &RemoveBackend{}
	case TypeRaiseTIDCeiling:
		return &RaiseTIDCeiling{}
	case TypeReserveOIDs:
		return &ReserveOIDs{}
	case TypeAdvanceOIDs:
		return &AdvanceOIDs{}
	case TypeRegisterProxy:
		return &RegisterProxy{}
	case TypeDeregisterProxy:
		return &DeregisterProxy{}
	case TypeSetMaxLease:
		return &SetMaxLease{}
	}
	return nil
}

// Encode encodes a command as a log entry: its type byte, then its body
// as JSON.
func Encode(c Command) ([]byte, error) {
	body, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("fsm: encode %T: %w", c, err)
	}
	return append([]byte{byte(c.Type())}, body...), nil
}

// Decode decodes a log entry. It returns ErrUnknownType (wrapped) for a
// type this version does not know, and an error for a body that is not
// the type's JSON (unknown fields included: a newer version's command
// must not be half applied).
func Decode(entry []byte) (Command, error) {
	if len(entry) == 0 {
		return nil, fmt.Errorf("fsm: empty log entry")
	}
	t := Type(entry[0])
	c := newCommand(t)
	if c == nil {
		return nil, fmt.Errorf("%w %d", ErrUnknownType, t)
	}
	dec := json.NewDecoder(bytes.NewReader(entry[1:]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return nil, fmt.Errorf("fsm: decode command type %d: %w", t, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("fsm: decode command type %d: data after the body", t)
	}
	return deref(c), nil
}

// deref turns the decoded pointer into the command value Encode takes.
func deref(c Command) Command {
	switch c := c.(type) {
	case *StartStorage:
		return *c
	case *UpdateTable:
		return *c
	case *AddBackend:
		return *c
	case *RemoveBackend:
		return *c
	case *RaiseTIDCeiling:
		return *c
	case *ReserveOIDs:
		return *c
	case *AdvanceOIDs:
		return *c
	case *RegisterProxy:
		return *c
	case *DeregisterProxy:
		return *c
	case *SetMaxLease:
		return *c
	}
	return c
}
