package integration

import (
	"context"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
)

// TestContractAgainstFileStorage runs the storage contract of
// raidcore/zodb/storagetest against Python's FileStorage behind a real
// runzeo (client-conflict-resolution, pack-gc on), through the Go client:
// the contract's expectations are FileStorage's behaviour, and this is
// where that is checked.
func TestContractAgainstFileStorage(t *testing.T) {
	if testing.Short() {
		t.Skip("starts one runzeo per behaviour; skipped with -short")
	}
	py := requirePython(t)
	storagetest.Run(t, func(t *testing.T) zodb.Storage {
		srv := startRunzeoGC(t, py, false, true, true)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{srv.Addr}, HeartbeatInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}, storagetest.Caps{GC: true, FileStorageQuirks: true})
}
