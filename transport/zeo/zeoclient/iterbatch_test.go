package zeoclient_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
	"github.com/zeoraid/zeoraid/transport/zeo/zeotest"
)

// TestBatchedIteration: against a Go server the client iterates with
// zeoraid_iterator_batch; across batch boundaries, and with a transaction
// too large for a batch (its records come one by one), it reads exactly
// what the storage holds.
func TestBatchedIteration(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st := memstorage.New("mem")
	_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(st)})
	c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, HeartbeatInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	oids, err := c.NewOIDs(ctx, 200)
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("b"), 3<<20)
	for i := range 150 {
		ops := []zodb.Op{store(oids[i], zodb.ZeroTID, "small")}
		if i == 10 || i == 11 || i == 90 {
			// Too large together for one batch (3 MiB each, 4 MiB a batch).
			ops = []zodb.Op{{Kind: zodb.OpStore, OID: oids[i], Data: big}, {Kind: zodb.OpStore, OID: oids[150+i%50], Data: big}}
		}
		if _, err := commit(ctx, c, ops...); err != nil {
			t.Fatal(err)
		}
	}
	want, err := st.Iterate(ctx, zodb.ZeroTID, zodb.EndOfTime)
	if err != nil {
		t.Fatal(err)
	}
	defer want.Close()
	got, err := c.Iterate(ctx, zodb.ZeroTID, zodb.EndOfTime)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	n := 0
	for {
		w, err := want.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		g, err := got.Next(ctx)
		if err != nil {
			t.Fatalf("transaction %d: %v", n, err)
		}
		if w == nil || g == nil {
			if w != nil || g != nil {
				t.Fatalf("after %d transactions: storage %v, client %v", n, w != nil, g != nil)
			}
			break
		}
		if g.TID != w.TID || g.Status != w.Status || !bytes.Equal(g.Meta.User, w.Meta.User) || len(g.Records) != len(w.Records) {
			t.Fatalf("transaction %d: got %s with %d records, want %s with %d", n, g.TID, len(g.Records), w.TID, len(w.Records))
		}
		for i := range w.Records {
			if g.Records[i].OID != w.Records[i].OID || !bytes.Equal(g.Records[i].Data, w.Records[i].Data) {
				t.Fatalf("transaction %s, record %d differs", w.TID, i)
			}
		}
		n++
	}
	if n != 150 {
		t.Fatalf("iterated %d transactions, want 150", n)
	}
	// Counting goes on with iterator_next.
	if cnt, err := c.CountTransactions(ctx, zodb.ZeroTID, zodb.EndOfTime); err != nil || cnt != 150 {
		t.Fatalf("CountTransactions: %d %v", cnt, err)
	}
}
