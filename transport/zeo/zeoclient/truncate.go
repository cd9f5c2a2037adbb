package zeoclient

import (
	"context"
	"strings"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
)

// truncateKey is the get_info key by which a zeoraid server says its
// storage has zeoraid_truncate.
const truncateKey = "zeoraid_truncate"

var _ zodb.Truncater = (*Client)(nil)

// Truncate implements zodb.Truncater with zeoraid_truncate. When the
// server has dropped transactions, subscribers get a Reset at its new last
// tid, delivered on the reader in the order of the server's messages, as
// after a reconnect to a server that went back. A call whose reply is lost
// has an unknown outcome: look at the server's last transaction again.
func (c *Client) Truncate(ctx context.Context, after, last zodb.TID) (zodb.TruncateResult, error) {
	var res zodb.TruncateResult
	s, err := c.session(ctx)
	if err != nil {
		return res, err
	}
	if !s.truncate {
		// A Python ZEO server, or a storage that is not the built-in
		// backend's.
		return res, zodb.NewUnsupported("the server at %s cannot drop transactions (no zeoraid_truncate)", strings.Join(c.opts.Addrs, ", "))
	}
	var parsed zodb.TruncateResult
	var perr error
	onReply := func(v any, err error) {
		if err != nil {
			return
		}
		parsed, perr = parseTruncate(v)
		if perr != nil || len(parsed.Dropped) == 0 {
			return
		}
		c.deliverMu.Lock()
		defer c.deliverMu.Unlock()
		c.mu.Lock()
		if s.gen == c.gen {
			c.last = parsed.Last
		}
		c.mu.Unlock()
		c.emit(zodb.CommitEvent{TID: parsed.Last, Reset: true})
	}
	p, err := s.start("zeoraid_truncate", onReply, after, last)
	if err != nil {
		return res, err
	}
	ctx, cancel := c.withDeadline(ctx, c.opts.CallTimeout)
	defer cancel()
	if _, err := s.wait(ctx, "zeoraid_truncate", p); err != nil {
		return res, err
	}
	return parsed, perr
}

func parseTruncate(v any) (zodb.TruncateResult, error) {
	var res zodb.TruncateResult
	t, ok := wire.Seq(v)
	if !ok || len(t) != 3 {
		return res, zodb.NewProtocolError("zeoraid_truncate returned %s", wire.Repr(v))
	}
	list, ok := wire.Seq(t[0])
	if !ok {
		return res, zodb.NewProtocolError("zeoraid_truncate returned %s", wire.Repr(v))
	}
	for _, x := range list {
		tid, err := wire.AsTID(x)
		if err != nil {
			return res, zodb.NewProtocolError("zeoraid_truncate returned %s", wire.Repr(v))
		}
		res.Dropped = append(res.Dropped, tid)
	}
	var err error
	if res.Last, err = wire.AsTID(t[1]); err != nil {
		return res, zodb.NewProtocolError("zeoraid_truncate returned %s", wire.Repr(v))
	}
	if res.KeptIn, err = wire.AsText(t[2]); err != nil {
		return res, zodb.NewProtocolError("zeoraid_truncate returned %s", wire.Repr(v))
	}
	return res, nil
}
