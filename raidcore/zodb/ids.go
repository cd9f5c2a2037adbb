package zodb

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
)

// OID is a ZODB object id: 8 bytes, a big-endian unsigned integer. The root
// object is oid 0.
type OID [8]byte

// TID is a ZODB transaction id (also called a serial): 8 bytes holding a
// persistent TimeStamp. Byte order equals time order.
type TID [8]byte

// ZeroTID is z64: "no transaction yet", and the serial of a new object.
var ZeroTID TID

// MaxTID is the largest tid a client asks for; load(oid) is
// loadBefore(oid, MaxTID).
var MaxTID = TID{0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// OIDFromUint64 returns the oid with the given numeric value.
func OIDFromUint64(n uint64) OID {
	var o OID
	binary.BigEndian.PutUint64(o[:], n)
	return o
}

// Uint64 returns the numeric value of the oid.
func (o OID) Uint64() uint64 { return binary.BigEndian.Uint64(o[:]) }

// String formats the oid as 16 hex digits.
func (o OID) String() string { return hex.EncodeToString(o[:]) }

// TIDFromUint64 returns the tid with the given numeric value.
func TIDFromUint64(n uint64) TID {
	var t TID
	binary.BigEndian.PutUint64(t[:], n)
	return t
}

// Uint64 returns the numeric value of the tid.
func (t TID) Uint64() uint64 { return binary.BigEndian.Uint64(t[:]) }

// IsZero reports whether t is z64.
func (t TID) IsZero() bool { return t == ZeroTID }

// String formats the tid as 16 hex digits.
func (t TID) String() string { return hex.EncodeToString(t[:]) }

// Less reports whether t sorts before u (bytewise, which is numeric and time
// order).
func (t TID) Less(u TID) bool { return t.Uint64() < u.Uint64() }

// Next returns the tid one unit above t (t + 1 as a 64-bit integer). Unlike
// LaterThan it does not roll the seconds over into the next minute, so it
// is meant for bounds ("everything after t"), not for new transaction ids.
func (t TID) Next() TID { return TIDFromUint64(t.Uint64() + 1) }

// Prev returns t - 1 as a 64-bit integer (ZeroTID stays ZeroTID).
func (t TID) Prev() TID {
	if t.IsZero() {
		return t
	}
	return TIDFromUint64(t.Uint64() - 1)
}

// ParseOID parses 16 hex digits (or a shorter hex number) as an oid.
func ParseOID(s string) (OID, error) {
	n, err := parseHex64(s)
	return OIDFromUint64(n), err
}

// ParseTID parses 16 hex digits (or a shorter hex number) as a tid.
func ParseTID(s string) (TID, error) {
	n, err := parseHex64(s)
	return TIDFromUint64(n), err
}

func parseHex64(s string) (uint64, error) {
	if len(s) == 0 || len(s) > 16 {
		return 0, fmt.Errorf("zodb: %q is not 1 to 16 hex digits", s)
	}
	var n uint64
	for _, c := range []byte(s) {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, fmt.Errorf("zodb: %q is not a hex number", s)
		}
		n = n<<4 | uint64(d)
	}
	return n, nil
}

// OIDFromBytes converts an 8-byte slice to an oid.
func OIDFromBytes(b []byte) (OID, error) {
	var o OID
	if len(b) != 8 {
		return o, fmt.Errorf("zodb: an oid has 8 bytes, got %d", len(b))
	}
	copy(o[:], b)
	return o, nil
}

// TIDFromBytes converts an 8-byte slice to a tid.
func TIDFromBytes(b []byte) (TID, error) {
	var t TID
	if len(b) != 8 {
		return t, fmt.Errorf("zodb: a tid has 8 bytes, got %d", len(b))
	}
	copy(t[:], b)
	return t, nil
}

// MarshalText writes the oid as 16 hex digits (JSON, config files).
func (o OID) MarshalText() ([]byte, error) { return []byte(o.String()), nil }

// UnmarshalText reads hex digits.
func (o *OID) UnmarshalText(b []byte) error {
	v, err := ParseOID(string(b))
	*o = v
	return err
}

// MarshalText writes the tid as 16 hex digits (JSON, config files).
func (t TID) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText reads hex digits.
func (t *TID) UnmarshalText(b []byte) error {
	v, err := ParseTID(string(b))
	*t = v
	return err
}
