package zeoclient_test

import (
	"context"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
	"github.com/zeoraid/zeoraid/transport/zeo/zeotest"
)

// TestContractThroughZEO runs the storage contract through the Go client
// and the Go server (in client-conflict-resolution mode), in both
// encodings: everything the contract checks survives the wire. (One client cannot hold two transactions, so the
// commit-lock behaviour is the server's, checked in zeoserver's tests.)
func TestContractThroughZEO(t *testing.T) {
	for _, enc := range []wire.Encoding{wire.Pickle, wire.Msgpack} {
		t.Run(string(rune(enc)), func(t *testing.T) {
			storagetest.Run(t, func(t *testing.T) zodb.Storage {
				_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(memstorage.New("mem")), Encoding: enc, ClientConflictResolution: true})
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, HeartbeatInterval: -1})
				if err != nil {
					t.Fatal(err)
				}
				return c
			}, storagetest.Caps{GC: false, Blobs: true})
		})
	}
}
