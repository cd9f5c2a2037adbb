package wire

import "github.com/zeoraid/zeoraid/raidcore/zodb/pickle"

// The value types of decoded messages are the pickle package's: both
// encodings decode into them (see pickle.Value for the list).
type (
	Tuple  = pickle.Tuple
	List   = pickle.List
	Item   = pickle.Item
	Dict   = pickle.Dict
	Global = pickle.Global
)

// Helpers on values, from the pickle package.
var (
	Seq     = pickle.Seq
	Int     = pickle.Int
	Truth   = pickle.Truth
	Equal   = pickle.Equal
	Repr    = pickle.Repr
	NewDict = pickle.NewDict
)

// AppendPickle appends the Z5 encoding of v to buf.
func AppendPickle(buf []byte, v any) ([]byte, error) { return pickle.Append(buf, v) }

// DecodePickle decodes one Z5 payload.
func DecodePickle(data []byte) (any, error) { return pickle.Decode(data) }
