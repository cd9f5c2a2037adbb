package zeoserver

import (
	"os"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// spool holds the data of one large transaction beyond what is kept in
// memory: a temporary file that ops refer to with zodb.Spilled, removed
// when the transaction ends in any way.
type spool struct {
	f    *os.File
	size int64
	// err is the first failure to write the spool; the transaction then
	// fails at vote (the data it lost cannot be committed).
	err error
}

// spoolData decides where the data of a store or restore lives: in memory
// while the transaction's buffered data stays within the threshold, then
// in the spool. It fills op.Data or op.Spilled; c.mu is held.
func (c *conn) spoolData(t *zeoTxn, op *zodb.Op, data []byte) {
	threshold := c.srv.cfg.SpoolThreshold
	if threshold < 0 || t.inMemory+int64(len(data)) <= threshold {
		t.inMemory += int64(len(data))
		op.Data = data
		return
	}
	if t.spool == nil {
		t.spool = &spool{}
		f, err := os.CreateTemp(c.srv.cfg.SpoolDir, "zeoraid-spool-*")
		if err != nil {
			t.spool.err = err
		} else {
			t.spool.f = f
			c.logger().Debug("spooling a large transaction", "file", f.Name(), "in_memory", t.inMemory)
		}
	}
	sp := t.spool
	if sp.err != nil {
		return // the vote fails; keep nothing
	}
	if _, err := sp.f.WriteAt(data, sp.size); err != nil {
		sp.err = err
		return
	}
	op.Spilled = &zodb.Spilled{R: sp.f, Off: sp.size, Len: len(data)}
	sp.size += int64(len(data))
	c.ss.stats.mu.Lock()
	c.ss.stats.spooledBytes += int64(len(data))
	c.ss.stats.mu.Unlock()
}

// spoolErr is the error a vote on t must fail with, if its spool failed.
func (t *zeoTxn) spoolErr() error {
	if t.spool == nil || t.spool.err == nil {
		return nil
	}
	return zodb.NewStorageError("cannot spool the transaction's data to a temporary file: %v", t.spool.err)
}

// dropSpool closes and removes t's spool file. Called when the transaction
// has ended, once the storage no longer reads from it.
func (c *conn) dropSpool(t *zeoTxn) {
	if t.spool == nil || t.spool.f == nil {
		return
	}
	name := t.spool.f.Name()
	t.spool.f.Close()
	if err := os.Remove(name); err != nil {
		c.logger().Error("cannot remove a spool file", "file", name, "error", err)
	}
	t.spool.f = nil
}
