package integration

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// blobTestSize is the size of the large blob of the blob tests: 192 MiB,
// or ZEORAID_BLOB_MB.
func blobTestSize(t testing.TB) int64 {
	if v := os.Getenv("ZEORAID_BLOB_MB"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("ZEORAID_BLOB_MB=%q", v)
		}
		return int64(n) << 20
	}
	return 192 << 20
}

// writeBlobFile writes size bytes of seeded noise to a new file, a chunk
// at a time, and returns its path and SHA-256.
func writeBlobFile(t testing.TB, size int64, seed uint64) (string, [32]byte) {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "big.blob"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	r := rand.New(rand.NewPCG(seed, 1))
	buf := make([]byte, 8)
	for left := size; left > 0; {
		v := r.Uint64()
		for i := range buf {
			buf[i] = byte(v >> (8 * i))
		}
		n := min(left, 8)
		w.Write(buf[:n])
		left -= n
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return f.Name(), sum
}

// procMem is a process's resident set now (VmRSS) or at its peak
// (VmHWM), from /proc (Linux); 0 if unknown.
func procMem(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// TestBlobBackendKilledMidStream: a proxy over three `zeoraid backend`s;
// a Go client commits a large blob (192 MiB, ZEORAID_BLOB_MB); one
// backend is killed with SIGKILL while the blob streams to it. The commit
// completes on the other two and the backend is degraded; started again
// on its data directory it is recovered automatically, blob included;
// the backends are identical (verify compares blob contents), the blob
// reads back whole through the proxy, and no process holds a blob in
// memory: every process runs with GOMEMLIMIT=32MiB, a first blob of a
// quarter of the size goes through before, and the peak resident set of
// the proxy and the surviving backends (VmHWM) grows by less than a
// quarter of the large blob's size over what that small one took (memory
// that followed the blob's size would add three quarters of it). Measured
// with -race: the proxy peaks at about 120 MiB for 48, 96, 192 and 384
// MiB blobs alike (its buffers in flight, inflated by the race
// detector), the backends at about 70 MiB.
func TestBlobBackendKilledMidStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	size := blobTestSize(t)
	t.Setenv("GOMEMLIMIT", "32MiB") // for the processes this test starts
	path, sum := writeBlobFile(t, size, 7)
	bs := startRaidBackends(t, 3)
	px := startRaidProxy(t, bs, "--auto-recover=true", "--vote-timeout", "30s", "--finish-timeout", "30s", "--read-timeout", "10s")
	victim := bs[1]
	defer func() {
		if t.Failed() {
			t.Logf("proxy log:\n%s", tail(px.Log(), 60))
			t.Logf("backend %s log:\n%s", victim.Name, tail(victim.Log(), 30))
		}
	}()
	c, err := openGoClient(ctx, px.Addr, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.SupportsBlobs() {
		t.Fatal("the proxy does not advertise IBlobStorage")
	}
	oids, err := c.NewOIDs(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	commit := func(ops ...zodb.Op) (zodb.TID, error) {
		txn := &zodb.Transaction{Meta: zodb.TxnMeta{Description: []byte("blob")}, Ops: ops}
		if _, err := c.Vote(ctx, txn); err != nil {
			c.Abort(ctx, txn)
			return zodb.TID{}, err
		}
		return c.Finish(ctx, txn)
	}
	record := []byte("\x80\x03cZODB.blob\nBlob\nq\x00.\x80\x03N.")
	small, _ := writeBlobFile(t, 1000, 8)
	if _, err := commit(zodb.Op{Kind: zodb.OpStore, OID: oids[0], Data: record, Blob: &zodb.Blob{Path: small, Size: 1000}}); err != nil {
		t.Fatal(err)
	}

	// A quarter-size blob first: what streaming costs, whatever the size.
	quarter, _ := writeBlobFile(t, size/4, 9)
	if _, err := commit(zodb.Op{Kind: zodb.OpStore, OID: oids[2], Data: record, Blob: &zodb.Blob{Path: quarter, Size: size / 4}}); err != nil {
		t.Fatal(err)
	}
	procs := []*zproc{px.proc, bs[0].proc, bs[1].proc, bs[2].proc}
	before := map[*zproc]int64{}
	for _, p := range procs {
		before[p] = procMem(p.cmd.Process.Pid, "VmHWM")
	}
	type result struct {
		tid zodb.TID
		err error
	}
	done := make(chan result, 1)
	t0 := time.Now()
	go func() {
		tid, err := commit(zodb.Op{Kind: zodb.OpStore, OID: oids[1], Data: record, Blob: &zodb.Blob{Path: path, Size: size}})
		done <- result{tid, err}
	}()
	// The upload reaches the victim's spool while the proxy streams the
	// vote: kill it once a good part has arrived.
	spool := filepath.Join(victim.Dir, "spool")
	waitFor(t, 2*time.Minute, "the blob streaming into "+victim.Name, func() bool {
		files, _ := filepath.Glob(filepath.Join(spool, "zeoraid-blob-*"))
		for _, f := range files {
			if fi, err := os.Stat(f); err == nil && fi.Size() > size/8 && fi.Size() < size {
				return true
			}
		}
		return false
	})
	victim.Kill9(t)
	t.Logf("killed %s %.1fs into the commit", victim.Name, time.Since(t0).Seconds())
	var res result
	select {
	case res = <-done:
	case <-ctx.Done():
		t.Fatal("the commit did not end")
	}
	if res.err != nil {
		t.Fatalf("the commit with a backend killed mid-stream failed: %v", res.err)
	}
	t.Logf("committed %d MiB blob as %s in %.1fs", size>>20, res.tid, time.Since(t0).Seconds())
	if st, ok := px.waitStatus(10*time.Second, func(s apiStatus) bool { b, _ := s.backend(victim.Name); return b.State == "degraded" }); !ok {
		t.Fatalf("%s not degraded: %s", victim.Name, st.brief())
	}
	victim.Start(t)
	if st, ok := px.waitStatus(3*time.Minute, func(s apiStatus) bool { return s.Status == "optimal" }); !ok {
		t.Fatalf("not optimal again after %s came back: %s", victim.Name, st.brief())
	}
	v := px.Verify(t)
	if !v.Identical || v.Blobs != 3 || v.BlobBytes != size+size/4+1000 {
		t.Fatalf("verify: %+v", v)
	}
	// The blob through the proxy, from each backend in turn (reads
	// rotate), hashed as it streams.
	for i := 0; i < 3; i++ {
		r, n, err := c.OpenBlob(ctx, oids[1], res.tid)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		got, err := io.Copy(h, r)
		r.Close()
		if err != nil || got != size || n != size || [32]byte(h.Sum(nil)) != sum {
			t.Fatalf("read %d of the blob: %d bytes (announced %d), %v", i, got, n, err)
		}
	}
	// The victim's process was replaced: its peak covers the recovery.
	procs[2] = victim.proc
	before[victim.proc] = 0
	for _, p := range procs {
		peak := procMem(p.cmd.Process.Pid, "VmHWM")
		grew := peak - before[p]
		t.Logf("%s: peak RSS %d MiB (%d MiB after the %d MiB blob)", p.what, peak>>20, before[p]>>20, size>>22)
		if p != victim.proc && grew > size/4 {
			t.Errorf("%s: peak grew by %d MiB when a %d MiB blob followed a %d MiB one: it is not streamed", p.what, grew>>20, size>>20, size>>22)
		}
		if p == victim.proc && peak > size/2 {
			t.Errorf("%s (restarted, recovered the blob): peak RSS %d MiB for a %d MiB blob: it is not streamed", p.what, peak>>20, size>>20)
		}
	}
}
