package wire

import (
	"fmt"
)

// Encoding is the message encoding letter of the handshake.
type Encoding byte

// The two ZEO 5 encodings.
const (
	Pickle  Encoding = 'Z'
	Msgpack Encoding = 'M'
)

func (e Encoding) String() string {
	switch e {
	case Pickle:
		return "Z5 (pickle)"
	case Msgpack:
		return "M5 (msgpack)"
	}
	return fmt.Sprintf("unknown encoding %q", byte(e))
}

// Valid reports whether e is Pickle or Msgpack.
func (e Encoding) Valid() bool { return e == Pickle || e == Msgpack }

// ReplyMethod is the method name of replies (and of the heartbeat).
const ReplyMethod = ".reply"

// Message flags.
const (
	FlagCall   = 0 // a call that expects a reply; a normal reply
	FlagOneWay = 1 // a one-way (async) call
	FlagError  = 2 // an error reply
)

// HeartbeatID is the msgid of heartbeat messages, which receivers ignore.
const HeartbeatID = int64(-1)

// Message is one ZEO message: the 4-tuple (msgid, flags, method, args).
type Message struct {
	// ID is the message id: a positive int64 for calls, 0 for one-way calls,
	// -1 for heartbeats, and for loadBefore calls from Python clients a
	// Tuple (oid, tid). Replies echo it unchanged.
	ID any
	// Flags is FlagCall, FlagOneWay or FlagError.
	Flags int
	// Method is the method name, or ReplyMethod.
	Method string
	// Args holds the positional arguments of a call (a Tuple), the result
	// of a reply, or the (class, payload) pair of an error reply.
	Args any
}

// IsReply reports whether m is a reply (or a heartbeat).
func (m *Message) IsReply() bool { return m.Method == ReplyMethod }

// IsHeartbeat reports whether m is a heartbeat, which must be ignored.
func (m *Message) IsHeartbeat() bool {
	id, ok := m.ID.(int64)
	return ok && id == HeartbeatID
}

// CallArgs returns the arguments of a call.
func (m *Message) CallArgs() []any {
	s, _ := Seq(m.Args)
	return s
}

// NewCall builds a call expecting a reply.
func NewCall(id int64, method string, args ...any) Message {
	return Message{ID: id, Flags: FlagCall, Method: method, Args: Tuple(args)}
}

// NewOneWay builds a one-way call.
func NewOneWay(method string, args ...any) Message {
	return Message{ID: int64(0), Flags: FlagOneWay, Method: method, Args: Tuple(args)}
}

// NewReply builds the reply to the call with id.
func NewReply(id any, result any) Message {
	return Message{ID: id, Flags: FlagCall, Method: ReplyMethod, Args: result}
}

// NewErrorReply builds the error reply to the call with id.
func NewErrorReply(id any, err error) Message {
	return Message{ID: id, Flags: FlagError, Method: ReplyMethod, Args: ErrorValue(err)}
}

// Heartbeat is the message Python clients send every 60 seconds.
func Heartbeat() Message {
	return Message{ID: HeartbeatID, Flags: FlagCall, Method: ReplyMethod, Args: nil}
}

// tuple returns the 4-tuple as Python encodes it: calls carry a bool flag,
// replies an int.
func (m *Message) tuple() Tuple {
	var flag any = int64(m.Flags)
	if !m.IsReply() {
		flag = m.Flags == FlagOneWay
	}
	return Tuple{m.ID, flag, m.Method, m.Args}
}

// AppendEncoded appends the encoded message (without the frame header) to
// buf.
func (e Encoding) AppendEncoded(buf []byte, m Message) ([]byte, error) {
	switch e {
	case Pickle:
		return AppendPickle(buf, m.tuple())
	case Msgpack:
		return AppendMsgpack(buf, m.tuple())
	}
	return nil, fmt.Errorf("wire: encode with %v", e)
}

// Encode returns the encoded message.
func (e Encoding) Encode(m Message) ([]byte, error) { return e.AppendEncoded(nil, m) }

// DecodeValue decodes one value in encoding e.
func (e Encoding) DecodeValue(data []byte) (any, error) {
	switch e {
	case Pickle:
		return DecodePickle(data)
	case Msgpack:
		return DecodeMsgpack(data)
	}
	return nil, fmt.Errorf("wire: decode with %v", e)
}

// Decode decodes one message payload.
func (e Encoding) Decode(data []byte) (Message, error) {
	v, err := e.DecodeValue(data)
	if err != nil {
		return Message{}, err
	}
	s, ok := Seq(v)
	if !ok || len(s) != 4 {
		return Message{}, fmt.Errorf("wire: a message is a 4-tuple, got %s", shortRepr(v))
	}
	m := Message{ID: s[0], Args: s[3]}
	switch s[0].(type) {
	case int64, uint64, Tuple, List:
	default:
		return Message{}, fmt.Errorf("wire: bad message id %s", shortRepr(s[0]))
	}
	switch f := s[1].(type) {
	case bool:
		if f {
			m.Flags = FlagOneWay
		}
	case int64:
		if f < 0 || f > 2 {
			return Message{}, fmt.Errorf("wire: bad message flags %d", f)
		}
		m.Flags = int(f)
	case nil:
	default:
		return Message{}, fmt.Errorf("wire: bad message flags %s", shortRepr(s[1]))
	}
	name, ok := s[2].(string)
	if !ok {
		return Message{}, fmt.Errorf("wire: method name must be text, got %s", shortRepr(s[2]))
	}
	m.Method = name
	if !m.IsReply() {
		if _, ok := Seq(m.Args); !ok {
			return Message{}, fmt.Errorf("wire: arguments of %s must be a sequence, got %s", name, shortRepr(m.Args))
		}
	}
	return m, nil
}

func shortRepr(v any) string {
	s := Repr(v)
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return s
}
