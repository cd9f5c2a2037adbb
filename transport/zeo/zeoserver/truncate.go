package zeoserver

import (
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
)

// truncateKey is the get_info key by which a server says its storage has
// zeoraid_truncate (zeoclient's Truncate looks for it).
const truncateKey = "zeoraid_truncate"

// truncate is zeoraid_truncate(after, last) -> (dropped tids, last tid,
// kept_in): zodb.Truncater's Truncate, for a RAID array bringing back a
// backend that holds transactions the array never acknowledged. The
// storage's Reset closes every other connection (their clients saw
// transactions that are gone and must verify their caches); the calling
// connection stays open, since it asked and is told the new last tid, and
// the invalidations of commits after the truncation reach it only after
// that reply (its client moves its last tid back when it reads the reply).
func (c *conn) truncate(m wire.Message) {
	fan := c.ss.fan
	res, err := c.runTruncate(m.CallArgs(), func() { fan.spare(c, true) })
	c.reply(m, res, err)
	fan.spare(c, false)
}

func (c *conn) runTruncate(args []any, spare func()) (any, error) {
	if err := argc("zeoraid_truncate", args, 2, 2); err != nil {
		return nil, err
	}
	tr, ok := c.ss.st.(zodb.Truncater)
	if !ok {
		return nil, zodb.NewUnsupported("storage %s cannot drop transactions", c.storageName())
	}
	if c.readOnly {
		return nil, zodb.NewReadOnlyError()
	}
	after, err := wire.AsTID(args[0])
	if err != nil {
		return nil, typeErr("zeoraid_truncate", err)
	}
	last, err := wire.AsTID(args[1])
	if err != nil {
		return nil, typeErr("zeoraid_truncate", err)
	}
	c.waitFinishes()
	c.mu.Lock()
	busy := c.txn != nil
	c.mu.Unlock()
	if busy {
		return nil, zodb.NewStorageTransactionError("zeoraid_truncate during a transaction of this connection")
	}
	c.logger().Warn("dropping the newest transactions at a client's request", "after", after, "last", last)
	spare()
	res, err := tr.Truncate(c.ctx, after, last)
	if err != nil {
		c.logger().Error("truncation failed", "after", after, "error", err)
		return nil, err
	}
	dropped := make([]any, len(res.Dropped))
	for i, t := range res.Dropped {
		dropped[i] = t
	}
	return wire.Tuple{dropped, res.Last, res.KeptIn}, nil
}
