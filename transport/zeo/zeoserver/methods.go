package zeoserver

import (
	"context"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
)

type handlerKind int

const (
	inline handlerKind = iota // run on the reader, in order
	read                      // run concurrently after earlier messages
	custom                    // the handler replies itself
)

type handler struct {
	kind   handlerKind
	fn     func(c *conn, ctx context.Context, args []any) (any, error)
	load   func(c *conn, m wire.Message)
	custom func(c *conn, m wire.Message)
}

var methods map[string]handler

func init() {
	methods = map[string]handler{
		"get_info":                        {kind: inline, fn: (*conn).getInfo},
		"lastTransaction":                 {kind: inline, fn: (*conn).lastTransaction},
		"getInvalidations":                {kind: inline, fn: (*conn).getInvalidations},
		"ping":                            {kind: inline, fn: (*conn).ping},
		"set_client_label":                {kind: inline, fn: (*conn).setClientLabel},
		"server_status":                   {kind: inline, fn: (*conn).serverStatus},
		"new_oids":                        {kind: inline, fn: (*conn).newOIDs},
		"new_oid":                         {kind: inline, fn: (*conn).newOID},
		"loadBefore":                      {kind: read, load: (*conn).loadBefore},
		"getTid":                          {kind: read, load: (*conn).getTid},
		"loadSerial":                      {kind: read, fn: (*conn).loadSerial},
		"history":                         {kind: read, fn: (*conn).history},
		"record_iternext":                 {kind: read, fn: (*conn).recordIterNext},
		"undoLog":                         {kind: read, fn: (*conn).undoLog},
		"undoInfo":                        {kind: read, fn: (*conn).undoInfo},
		"tpc_begin":                       {kind: inline, fn: (*conn).tpcBegin},
		"storea":                          {kind: inline, fn: (*conn).storea},
		"checkCurrentSerialInTransaction": {kind: inline, fn: (*conn).checkCurrent},
		"deleteObject":                    {kind: inline, fn: (*conn).deleteObject},
		"restorea":                        {kind: inline, fn: (*conn).restorea},
		"undoa":                           {kind: inline, fn: (*conn).undoa},
		"vote":                            {kind: custom, custom: (*conn).vote},
		"tpc_finish":                      {kind: custom, custom: (*conn).tpcFinish},
		"tpc_abort":                       {kind: inline, fn: (*conn).tpcAbort},
		"pack":                            {kind: custom, custom: (*conn).pack},
		"iterator_start":                  {kind: inline, fn: (*conn).iteratorStart},
		"iterator_next":                   {kind: inline, fn: (*conn).iteratorNext},
		"iterator_record_start":           {kind: inline, fn: (*conn).iteratorRecordStart},
		"iterator_record_next":            {kind: inline, fn: (*conn).iteratorRecordNext},
		"zeoraid_iterator_batch":          {kind: inline, fn: (*conn).iteratorBatch},
		"zeoraid_truncate":                {kind: custom, custom: (*conn).truncate},
		"iterator_gc":                     {kind: inline, fn: (*conn).iteratorGC},
		"sendBlob":                        {kind: read, fn: (*conn).sendBlob},
		"storeBlobStart":                  {kind: inline, fn: (*conn).storeBlobStart},
		"storeBlobChunk":                  {kind: inline, fn: (*conn).storeBlobChunk},
		"storeBlobEnd":                    {kind: inline, fn: (*conn).storeBlobEnd},
		"storeBlobShared":                 {kind: inline, fn: (*conn).storeBlobShared},
	}
}

// argc checks the number of arguments like Python's call would.
func argc(name string, args []any, min, max int) error {
	if len(args) < min || len(args) > max {
		if min == max {
			return zodb.NewTypeError("%s() takes %d positional arguments but %d were given", name, min, len(args))
		}
		return zodb.NewTypeError("%s() takes from %d to %d positional arguments but %d were given", name, min, max, len(args))
	}
	return nil
}

func typeErr(name string, err error) error {
	return zodb.NewTypeError("%s: %v", name, err)
}

// --- connection-level methods ------------------------------------------

func (c *conn) register(args []any) (any, error) {
	// ZEO <= 5.3 clients may pass credentials as a third argument.
	if err := argc("register", args, 2, 3); err != nil {
		return nil, err
	}
	name, err := wire.AsText(args[0])
	if err != nil {
		return nil, typeErr("register", err)
	}
	ss := c.srv.storages[name]
	if ss == nil {
		c.logger().Warn("unknown storage", "storage", name)
		return nil, zodb.NewValueError("unknown storage: %s", name)
	}
	readOnly := wire.Truth(args[1])
	if c.srv.cfg.Admit != nil {
		if err := c.srv.cfg.Admit(c.ctx, name, readOnly); err != nil {
			c.logger().Info("registration refused", "storage", name, "read_only", readOnly, "error", err)
			return nil, err
		}
	}
	if !readOnly {
		info, err := ss.st.Info(c.ctx)
		if err != nil {
			return nil, err
		}
		if c.srv.cfg.ReadOnly || info.ReadOnly {
			return nil, zodb.NewReadOnlyError()
		}
	}
	c.readOnly = readOnly || c.srv.cfg.ReadOnly
	c.writable.Store(!c.readOnly)
	c.ss = ss
	c.setLog(c.logger().With("storage", name))
	return ss.fan.register(c), nil
}

var fileStorageInterfaces = []string{
	"IStorageRestoreable", "IStorageIteration", "IStorageUndoable",
	"IStorageCurrentRecordIteration", "IExternalGC", "IStorage",
}

func (c *conn) getInfo(ctx context.Context, args []any) (any, error) {
	if err := argc("get_info", args, 0, 0); err != nil {
		return nil, err
	}
	info, err := c.ss.st.Info(ctx)
	if err != nil {
		return nil, err
	}
	ifaces := wire.Tuple{}
	if _, ok := c.blobStorage(); ok {
		// First, as a FileStorage with a blob directory lists them.
		ifaces = append(ifaces, wire.Tuple{"ZODB.interfaces", "IBlobStorageRestoreable"}, wire.Tuple{"ZODB.interfaces", "IBlobStorage"})
	}
	for _, n := range fileStorageInterfaces {
		if n == "IStorageUndoable" && !info.SupportsUndo {
			continue
		}
		ifaces = append(ifaces, wire.Tuple{"ZODB.interfaces", n})
	}
	ifaces = append(ifaces, wire.Tuple{"zope.interface", "Interface"})
	items := []any{
		"length", info.Length,
		"size", info.Size,
		"name", info.Name,
		"supportsUndo", info.SupportsUndo,
		"supports_record_iternext", true,
		"interfaces", ifaces,
		// zeoraid_iterator_batch is there (zeoclient's Iterate uses it).
		"zeoraid_iterator_batch", true,
	}
	if _, ok := c.ss.st.(zodb.Truncater); ok && !c.srv.cfg.ReadOnly && !info.ReadOnly {
		items = append(items, truncateKey, true)
	}
	if pipelines(c.ss.st) {
		// This connection may begin its next transaction while the one
		// before is finishing (see tpcFinish); zeoclient's Pipeline
		// looks for it, Python clients ignore it.
		items = append(items, "zeoraid_pipelined_finish", true)
	}
	return wire.NewDict(items...), nil
}

func (c *conn) lastTransaction(ctx context.Context, args []any) (any, error) {
	if err := argc("lastTransaction", args, 0, 0); err != nil {
		return nil, err
	}
	c.waitFinishes()
	return c.ss.fan.lastTID(), nil
}

func (c *conn) getInvalidations(ctx context.Context, args []any) (any, error) {
	if err := argc("getInvalidations", args, 1, 1); err != nil {
		return nil, err
	}
	tid, err := wire.AsTID(args[0])
	if err != nil {
		return nil, typeErr("getInvalidations", err)
	}
	latest, oids, ok := c.ss.fan.invalidations(tid)
	if !ok {
		return nil, nil
	}
	return wire.Tuple{latest, wire.OIDList(oids)}, nil
}

func (c *conn) ping(ctx context.Context, args []any) (any, error) {
	c.waitFinishes()
	if s, ok := c.ss.st.(zodb.Syncer); ok {
		if err := s.Sync(ctx); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

func (c *conn) setClientLabel(ctx context.Context, args []any) (any, error) {
	if len(args) == 1 {
		c.setLog(c.logger().With("label", wire.Repr(args[0])))
	}
	return nil, nil
}

func (c *conn) serverStatus(ctx context.Context, args []any) (any, error) {
	return c.srv.serverStatus(c.ss), nil
}

func (c *conn) newOIDs(ctx context.Context, args []any) (any, error) {
	if err := argc("new_oids", args, 0, 1); err != nil {
		return nil, err
	}
	n := int64(100)
	if len(args) == 1 {
		var err error
		if n, err = wire.AsInt(args[0]); err != nil {
			return nil, typeErr("new_oids", err)
		}
	}
	n = min(n, 100)
	if c.readOnly {
		return nil, zodb.NewReadOnlyError()
	}
	if n <= 0 {
		n = 1
	}
	oids, err := c.ss.st.NewOIDs(ctx, int(n))
	if err != nil {
		return nil, err
	}
	return wire.OIDList(oids), nil
}

func (c *conn) newOID(ctx context.Context, args []any) (any, error) {
	return nil, &zodb.RemoteError{Class: "builtins.AttributeError", Raw: wire.Tuple{"'ZEOStorage' object has no attribute 'new_oid'"}}
}

// --- reads -------------------------------------------------------------

func (c *conn) countLoad() {
	c.ss.stats.mu.Lock()
	c.ss.stats.loads++
	c.ss.stats.mu.Unlock()
}

// loadBefore must never let a client see a revision marked current after
// it was told of a newer one: a revision the storage reports as current
// is checked against the commits announced while the read ran (see
// fanout.replyCurrent and currentEnd).
func (c *conn) loadBefore(m wire.Message) {
	args := m.CallArgs()
	if err := argc("loadBefore", args, 2, 2); err != nil {
		c.reply(m, nil, err)
		return
	}
	oid, err := wire.AsOID(args[0])
	if err != nil {
		c.reply(m, nil, typeErr("loadBefore", err))
		return
	}
	before, err := wire.AsTID(args[1])
	if err != nil {
		c.reply(m, nil, typeErr("loadBefore", err))
		return
	}
	c.countLoad()
	fan := c.ss.fan
	mark := fan.mark()
	defer fan.unpin(mark) // every path, panics included
	rev, err := c.ss.st.LoadBefore(c.ctx, oid, before)
	if m.Flags == wire.FlagOneWay {
		return // nobody to answer; errors do not cost the connection
	}
	if err != nil || rev == nil {
		c.reply(m, nil, err)
		return
	}
	if !rev.End.IsZero() {
		c.reply(m, wire.Tuple{rev.Data, rev.TID, rev.End}, nil)
		return
	}
	fan.replyCurrent(c, mark, m, oid, func(later []zodb.TID) any {
		var end any
		if e := currentEnd(rev.TID, later); !e.IsZero() {
			end = e
		}
		return wire.Tuple{rev.Data, rev.TID, end}
	})
}

func (c *conn) getTid(m wire.Message) {
	args := m.CallArgs()
	if err := argc("getTid", args, 1, 1); err != nil {
		c.reply(m, nil, err)
		return
	}
	oid, err := wire.AsOID(args[0])
	if err != nil {
		c.reply(m, nil, typeErr("getTid", err))
		return
	}
	fan := c.ss.fan
	mark := fan.mark()
	defer fan.unpin(mark) // every path, panics included
	rev, err := c.ss.st.LoadBefore(c.ctx, oid, zodb.MaxTID)
	if m.Flags == wire.FlagOneWay {
		return
	}
	if err == nil && rev == nil {
		err = &zodb.POSKeyError{OID: oid}
	}
	if err != nil {
		c.reply(m, nil, err)
		return
	}
	fan.replyCurrent(c, mark, m, oid, func(later []zodb.TID) any {
		return currentTID(rev.TID, later)
	})
}

func (c *conn) loadSerial(ctx context.Context, args []any) (any, error) {
	if err := argc("loadSerial", args, 2, 2); err != nil {
		return nil, err
	}
	oid, err := wire.AsOID(args[0])
	if err != nil {
		return nil, typeErr("loadSerial", err)
	}
	serial, err := wire.AsTID(args[1])
	if err != nil {
		return nil, typeErr("loadSerial", err)
	}
	c.countLoad()
	return c.ss.st.LoadSerial(ctx, oid, serial)
}

func (c *conn) history(ctx context.Context, args []any) (any, error) {
	if err := argc("history", args, 1, 2); err != nil {
		return nil, err
	}
	oid, err := wire.AsOID(args[0])
	if err != nil {
		return nil, typeErr("history", err)
	}
	size := int64(1)
	if len(args) == 2 && args[1] != nil {
		if size, err = wire.AsInt(args[1]); err != nil {
			return nil, typeErr("history", err)
		}
	}
	entries, err := c.ss.st.History(ctx, oid, int(max(size, 0)))
	if err != nil {
		return nil, err
	}
	out := make(wire.List, len(entries))
	for i, e := range entries {
		// FileStorage: the extension's items, then the standard keys.
		d := wire.ExtensionDict(e.Meta.Extension)
		d = setKey(d, "time", e.TID.TimeTime())
		d = setKey(d, "user_name", nonNil(e.Meta.User))
		d = setKey(d, "description", nonNil(e.Meta.Description))
		d = setKey(d, "tid", e.TID)
		d = setKey(d, "size", int64(e.Size))
		out[i] = d
	}
	return out, nil
}

func setKey(d wire.Dict, k string, v any) wire.Dict {
	for i := range d {
		if s, ok := d[i].Key.(string); ok && s == k {
			d[i].Value = v
			return d
		}
	}
	return append(d, wire.Item{Key: k, Value: v})
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

func (c *conn) recordIterNext(ctx context.Context, args []any) (any, error) {
	if err := argc("record_iternext", args, 0, 1); err != nil {
		return nil, err
	}
	var from zodb.OID
	if len(args) == 1 && args[0] != nil {
		var err error
		if from, err = wire.AsOID(args[0]); err != nil {
			return nil, typeErr("record_iternext", err)
		}
	}
	rec, next, more, err := c.ss.st.RecordIterNext(ctx, from)
	if err != nil {
		return nil, err
	}
	var n any
	if more {
		n = next
	}
	return wire.Tuple{rec.OID, rec.TID, rec.Data, n}, nil
}

func (c *conn) undoLog(ctx context.Context, args []any) (any, error) {
	if err := argc("undoLog", args, 0, 2); err != nil {
		return nil, err
	}
	return c.undoQuery(ctx, "undoLog", args, nil)
}

func (c *conn) undoInfo(ctx context.Context, args []any) (any, error) {
	if err := argc("undoInfo", args, 0, 3); err != nil {
		return nil, err
	}
	var spec wire.Dict
	if len(args) == 3 && args[2] != nil {
		d, ok := args[2].(wire.Dict)
		if !ok {
			return nil, zodb.NewTypeError("undoInfo: specification must be a dict")
		}
		spec = d
	}
	return c.undoQuery(ctx, "undoInfo", args[:min(len(args), 2)], spec)
}

func (c *conn) undoQuery(ctx context.Context, name string, args []any, spec wire.Dict) (any, error) {
	first, last := int64(0), int64(-20)
	var err error
	if len(args) > 0 {
		if first, err = wire.AsInt(args[0]); err != nil {
			return nil, typeErr(name, err)
		}
	}
	if len(args) > 1 {
		if last, err = wire.AsInt(args[1]); err != nil {
			return nil, typeErr(name, err)
		}
	}
	info, err := c.ss.st.Info(ctx)
	if err != nil {
		return nil, err
	}
	if !info.SupportsUndo {
		return wire.Tuple{}, nil
	}
	var filter func(*zodb.UndoEntry) bool
	if len(spec) > 0 {
		filter = func(e *zodb.UndoEntry) bool {
			d := undoDict(e)
			for _, want := range spec {
				k, _ := want.Key.(string)
				got, ok := d.Get(k)
				if !ok || !specMatches(got, want.Value) {
					return false
				}
			}
			return true
		}
	}
	entries, err := c.ss.st.UndoLog(ctx, int(first), int(last), filter)
	if err != nil {
		return nil, err
	}
	out := make(wire.List, len(entries))
	for i := range entries {
		out[i] = undoDict(&entries[i])
	}
	return out, nil
}

// specMatches compares one undoInfo specification value with an entry's
// value: equality, or for Zope's ZopeUndo.Prefix objects a match of the
// leading path elements (ignoring a trailing " user name"), as
// Prefix.__eq__ does.
func specMatches(got, want any) bool {
	g, ok := want.(wire.Global)
	if !ok || g.Module != "ZopeUndo.Prefix" || g.Name != "Prefix" {
		return wire.Equal(got, want)
	}
	st, _ := g.State.(wire.Dict)
	pv, _ := st.Get("path")
	path, _ := wire.Seq(pv)
	var s string
	switch x := got.(type) {
	case string:
		s = x
	case []byte:
		s = string(x)
	default:
		return false
	}
	other := strings.Split(s, "/")
	if last := other[len(other)-1]; strings.Contains(last, " ") {
		other[len(other)-1] = last[:strings.LastIndex(last, " ")]
	}
	if len(other) < len(path) {
		return false
	}
	for i, p := range path {
		if ps, ok := p.(string); !ok || ps != other[i] {
			return false
		}
	}
	return true
}

// undoDict is FileStorage's undo description: id, time, user_name, size,
// description, then the extension's items.
func undoDict(e *zodb.UndoEntry) wire.Dict {
	d := wire.NewDict(
		"id", e.ID,
		"time", e.TID.TimeTime(),
		"user_name", nonNil(e.Meta.User),
		"size", int64(e.Size),
		"description", nonNil(e.Meta.Description),
	)
	for _, it := range wire.ExtensionDict(e.Meta.Extension) {
		if k, ok := it.Key.(string); ok {
			d = setKey(d, k, it.Value)
		}
	}
	return d
}

// --- pack -----------------------------------------------------------------

func (c *conn) pack(m wire.Message) {
	args := m.CallArgs()
	if err := argc("pack", args, 1, 2); err != nil {
		c.reply(m, nil, err)
		return
	}
	t, err := wire.AsFloat(args[0])
	if err != nil {
		c.reply(m, nil, typeErr("pack", err))
		return
	}
	wait := true
	if len(args) == 2 {
		wait = wire.Truth(args[1])
	}
	packTID := packTime(t)
	ss := c.ss
	run := func() error {
		c.logger().Info("pack started", "time", t, "tid", packTID)
		err := ss.st.Pack(context.Background(), packTID)
		if err != nil {
			c.logger().Error("pack failed", "error", err)
			return err
		}
		c.logger().Info("pack complete", "tid", packTID)
		if info, err := ss.st.Info(context.Background()); err == nil {
			ss.fan.broadcast(wire.NewOneWay("info", sizeInfo(info)))
		}
		return nil
	}
	c.bg.Add(1)
	if !wait {
		c.reply(m, nil, nil)
		go func() {
			defer c.bg.Done()
			run()
		}()
		return
	}
	go func() {
		defer c.bg.Done()
		c.reply(m, nil, run())
	}()
}

// packTime converts pack's float time like FileStorage does:
// TimeStamp(*gmtime(t)[:5] + (t % 60,)).
func packTime(t float64) zodb.TID {
	sec := int64(t)
	frac := t - float64(sec)
	if frac < 0 {
		sec--
		frac++
	}
	return zodb.TIDFromTime(time.Unix(sec, int64(frac*1e9)).UTC())
}

func sizeInfo(info zodb.StorageInfo) wire.Dict {
	return wire.NewDict("length", info.Length, "size", info.Size)
}

// --- helpers for text-or-bytes metadata ------------------------------------

// metaBytes accepts bytes, or text which it encodes as UTF-8 (what
// TransactionMetaData does with text).
func metaBytes(v any) ([]byte, error) {
	switch x := v.(type) {
	case []byte:
		return x, nil
	case string:
		if !utf8.ValidString(x) {
			return nil, fmt.Errorf("invalid UTF-8")
		}
		return []byte(x), nil
	case nil:
		return []byte{}, nil
	}
	return nil, fmt.Errorf("expected bytes, got %s", wire.Repr(v))
}

// pipelines tells whether the server offers pipelined commits over st:
// it finishes early and does not say otherwise.
func pipelines(st zodb.Storage) bool {
	if _, ok := st.(zodb.EarlyFinisher); !ok {
		return false
	}
	if pa, ok := st.(zodb.PipelineAdvertiser); ok {
		return pa.PipelinesFinishes()
	}
	return true
}
