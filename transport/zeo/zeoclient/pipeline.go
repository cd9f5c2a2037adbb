package zeoclient

import (
	"context"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
)

// pipelineKey is the get_info key by which a zeoraid server says that a
// connection may begin its next transaction while the one before is
// finishing (transport/zeo/zeoserver: a storage with group commit).
// Python ZEO servers do not send it: they refuse a tpc_begin while a
// transaction of the connection is unfinished.
const pipelineKey = "zeoraid_pipelined_finish"

func pipelinesFinishes(info wire.Dict) bool { return infoFlag(info, pipelineKey) }

// infoFlag reads a boolean of a get_info dict (false when absent).
func infoFlag(info wire.Dict, key string) bool {
	for _, it := range info {
		if k, _ := it.Key.(string); k == key {
			return wire.Truth(it.Value)
		}
	}
	return false
}

var _ zodb.Pipeliner = (*Client)(nil)

// Pipeline implements zodb.Pipeliner: a pipeline on the current
// connection, when its server pipelines finishes.
func (c *Client) Pipeline(ctx context.Context) (zodb.CommitPipeline, error) {
	if c.opts.ReadOnly {
		return nil, zodb.NewReadOnlyError()
	}
	s, err := c.session(ctx)
	if err != nil {
		return nil, err
	}
	if !s.pipelined {
		return nil, zodb.NewUnsupported("the server does not pipeline commits")
	}
	return &pipeline{c: c, s: s}, nil
}

// pipeline is a zodb.CommitPipeline bound to one session.
type pipeline struct {
	c *Client
	s *session
}

func (p *pipeline) Vote(ctx context.Context, txn *zodb.Transaction) (zodb.VoteResult, error) {
	return p.c.vote(ctx, txn, p.s, nil)
}

func (p *pipeline) VoteAsync(ctx context.Context, txn *zodb.Transaction) (func(context.Context) (zodb.VoteResult, error), error) {
	var wait func(context.Context) (zodb.VoteResult, error)
	if _, err := p.c.vote(ctx, txn, p.s, &wait); err != nil {
		return nil, err
	}
	return wait, nil
}

func (p *pipeline) FinishAsync(txn *zodb.Transaction) (func(context.Context) (zodb.TID, error), error) {
	return p.c.finishAsync(txn)
}

func (p *pipeline) Abort(ctx context.Context, txn *zodb.Transaction) error {
	return p.c.Abort(ctx, txn)
}

// Alive implements zodb.CommitPipeline: the pipeline's session is still
// the client's current one.
func (p *pipeline) Alive() bool {
	if p.s.isDead() {
		return false
	}
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	return p.c.cur == p.s
}

// isDead tells whether the session's connection is gone.
func (s *session) isDead() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dead
}
