package zeoclient_test

import (
	"context"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
	"github.com/zeoraid/zeoraid/transport/zeo/zeotest"
)

func TestSmoke(t *testing.T) {
	for _, enc := range []wire.Encoding{wire.Pickle, wire.Msgpack} {
		t.Run(enc.String(), func(t *testing.T) {
			st := memstorage.New("mem")
			_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(st), Encoding: enc})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if c.Encoding() != enc {
				t.Fatalf("encoding %v", c.Encoding())
			}
			oids, err := c.NewOIDs(ctx, 2)
			if err != nil {
				t.Fatal(err)
			}
			txn := &zodb.Transaction{Meta: zodb.TxnMeta{User: []byte("u"), Description: []byte("d")},
				Ops: []zodb.Op{{Kind: zodb.OpStore, OID: oids[0], Data: []byte("hello")}}}
			if _, err := c.Vote(ctx, txn); err != nil {
				t.Fatal(err)
			}
			tid, err := c.Finish(ctx, txn)
			if err != nil {
				t.Fatal(err)
			}
			rev, err := c.LoadBefore(ctx, oids[0], zodb.MaxTID)
			if err != nil {
				t.Fatal(err)
			}
			if string(rev.Data) != "hello" || rev.TID != tid || !rev.End.IsZero() {
				t.Fatalf("loaded %+v", rev)
			}
		})
	}
}
