package wire

import (
	"bytes"
	"fmt"
	"io"
)

// ProtocolVersion is the only ZEO protocol version spoken: "5".
const ProtocolVersion = "5"

// RUOK is the monitoring probe a client may send instead of its protocol
// answer; the server replies with a JSON status and closes.
var RUOK = []byte("ruok")

// ServerGreeting returns the server's first frame payload: "Z5" or "M5".
func ServerGreeting(enc Encoding) []byte { return []byte{byte(enc), '5'} }

// ParseClientAnswer checks the client's handshake answer. The server
// honours the client's letter whatever it announced, as Python's does. ruok
// is reported by the second result.
func ParseClientAnswer(p []byte) (enc Encoding, ruok bool, err error) {
	if bytes.Equal(p, RUOK) {
		return 0, true, nil
	}
	if len(p) < 2 || string(p[1:]) != ProtocolVersion || !Encoding(p[0]).Valid() {
		return 0, false, fmt.Errorf("wire: bad handshake %q", p)
	}
	return Encoding(p[0]), false, nil
}

// ClientAnswer computes a client's answer to a server greeting. prefer is
// the encoding to answer with, or 0 to echo the server's letter (what
// Python clients do). The version is the smaller of the server's and "5";
// anything but "5" is refused.
func ClientAnswer(greeting []byte, prefer Encoding) (Encoding, []byte, error) {
	if len(greeting) < 2 || !Encoding(greeting[0]).Valid() {
		return 0, nil, fmt.Errorf("wire: server greeted with %q, not a ZEO 5 protocol", greeting)
	}
	version := string(greeting[1:])
	if version > ProtocolVersion {
		version = ProtocolVersion
	}
	if version != ProtocolVersion {
		return 0, nil, fmt.Errorf("wire: server speaks protocol %q; only ZEO 5 is supported", greeting)
	}
	enc := Encoding(greeting[0])
	if prefer != 0 {
		enc = prefer
	}
	return enc, []byte{byte(enc), '5'}, nil
}

// ClientHandshake reads the server greeting from r and writes the answer
// to w.
func ClientHandshake(fr *FrameReader, w io.Writer, prefer Encoding) (Encoding, error) {
	greeting, err := fr.ReadFrame()
	if err != nil {
		return 0, fmt.Errorf("wire: reading the server greeting: %w", err)
	}
	enc, answer, err := ClientAnswer(greeting, prefer)
	if err != nil {
		return 0, err
	}
	return enc, WriteFrame(w, answer)
}
