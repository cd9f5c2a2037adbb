package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// TestLargeTransactionThroughProxy commits one large transaction (1 MiB
// records) through `zeoraid proxy` to three `zeoraid backend`s: it must
// commit on all of them (nothing degraded), the backends must be
// identical, and the proxy's memory must stay bounded (its resident
// high-water mark grows by far less than the transaction; checked
// without the race detector, which multiplies memory). The client reads
// the records from a file, so the test process does not hold them either.
//
// ZEORAID_BIGTXN_PROXY_MB sets the size (default 256, 64 with -race).
func TestLargeTransactionThroughProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("large transaction: skipped with -short")
	}
	mb := 256
	if raceEnabled {
		mb = 64
	}
	if v := os.Getenv("ZEORAID_BIGTXN_PROXY_MB"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("ZEORAID_BIGTXN_PROXY_MB=%q: want a positive number", v)
		}
		mb = n
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	bs := startRaidBackends(t, 3)
	px := startRaidProxy(t, bs, "--auto-recover=false")

	// The records, in a file.
	const recSize = 1 << 20
	f, err := os.Create(filepath.Join(t.TempDir(), "records"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(7, 11))
	w := bufio.NewWriterSize(f, 1<<20)
	sums := make([][32]byte, mb)
	buf := make([]byte, recSize)
	for i := range mb {
		for k := 0; k < recSize; k += 8 {
			v := rng.Uint64()
			for b := 0; b < 8; b++ {
				buf[k+b] = byte(v >> (8 * b))
			}
		}
		sums[i] = sha256.Sum256(buf)
		w.Write(buf)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}

	c, err := openGoClient(ctx, px.Addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	oids, err := c.NewOIDs(ctx, mb)
	if err != nil {
		t.Fatal(err)
	}
	txn := &zodb.Transaction{Meta: zodb.TxnMeta{Description: []byte(fmt.Sprintf("%d MiB", mb))}}
	for i, o := range oids {
		txn.Ops = append(txn.Ops, zodb.Op{Kind: zodb.OpStore, OID: o, Spilled: &zodb.Spilled{R: f, Off: int64(i) * recSize, Len: recSize}})
	}
	pid := px.proc.cmd.Process.Pid
	before := procMemory(t, pid, "VmRSS")
	start := time.Now()
	if _, err := c.Vote(ctx, txn); err != nil {
		t.Fatalf("vote of %d MiB: %v", mb, err)
	}
	tid, err := c.Finish(ctx, txn)
	if err != nil {
		t.Fatalf("finish of %d MiB: %v", mb, err)
	}
	took := time.Since(start)
	hwm := procMemory(t, pid, "VmHWM")
	t.Logf("%d MiB committed through the proxy to 3 backends in %v (%.0f MiB/s); proxy resident memory %d MiB before, high-water mark %d MiB after (race detector: %v)",
		mb, took.Round(time.Millisecond), float64(mb)/took.Seconds(), before>>20, hwm>>20, raceEnabled)
	if !raceEnabled {
		// Bounded: spooling, per-backend send windows and buffers, not
		// the transaction's size.
		if grew := hwm - before; grew > 192<<20 {
			t.Errorf("the proxy's resident memory grew by %d MiB for a %d MiB transaction", grew>>20, mb)
		}
	}
	st, err := px.Status()
	if err != nil || st.Status != "optimal" {
		t.Fatalf("status after the large transaction: %s %v", st.brief(), err)
	}
	// The records arrived intact on every backend (a sample; verify
	// compares all of them).
	for _, b := range bs {
		bc, err := openGoClient(ctx, b.Addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range []int{0, mb / 2, mb - 1} {
			data, err := bc.LoadSerial(ctx, oids[i], tid)
			if err != nil || sha256.Sum256(data) != sums[i] {
				t.Errorf("backend %s: record %d of the large transaction: %v (hash ok: %v)", b.Name, i, err, err == nil && sha256.Sum256(data) == sums[i])
			}
		}
		bc.Close()
	}
	if v := px.Verify(t); !v.Identical || v.Transactions != 1 {
		t.Errorf("verify after the large transaction: %+v", v)
	}
}

// procMemory reads a "Vm..." line of /proc/pid/status, in bytes.
func procMemory(t testing.TB, pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("cannot read the proxy's memory: %v", err)
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte(field+":")); ok {
			f := strings.Fields(string(rest))
			if len(f) >= 1 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
