package boltstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	bolt "go.etcd.io/bbolt"
)

// The journal: one fsync per group commit instead of bbolt's two.
//
// A bbolt write transaction writes its dirty pages, fsyncs, writes the
// meta page and fsyncs again, so that the meta page never points at pages
// that are not on disk. With one client there is nothing to batch and
// those two fsyncs are the commit's latency. So a group of finished
// transactions is first appended to the journal (<path>.journal) as one
// checksummed record and made durable with one fdatasync; then it is
// acknowledged, announced and counted in LastTransaction. Later, several
// journal records at once go into bbolt in one write transaction (apply),
// after which the journal is truncated. Open applies whatever a crash
// left in the journal before anything else reads the file.
//
// Safe, because:
//   - A transaction is acknowledged only after its journal record is
//     fsynced, and a journal record is removed (truncation) only after
//     bbolt's write that holds it returned, fsyncs included. So every
//     acknowledged transaction is in bbolt or in the journal, whenever
//     the process dies.
//   - Apply is idempotent: Open skips journal transactions at or below
//     bbolt's last tid (a crash between apply and truncation).
//   - Records are appended and fsynced one at a time by one goroutine, so
//     only the last record can be torn by a crash. A record that does not
//     check (its length has a checksum of its own, its payload another)
//     is discarded only when no valid record follows it (it was never
//     fsynced, so never acknowledged); when one does, Open refuses the
//     file with an error naming it.
//   - Reads never see a state older than an acknowledged transaction:
//     every read of committed data first waits until what the journal
//     holds is applied (waitApplied); votes see journaled transactions
//     through the same overlay as queued ones (pendingView).
//   - Transactions with blobs, and groups too large to keep in memory
//     twice, are written straight into bbolt as before (after whatever
//     the journal holds, so bbolt stays in tid order).

const (
	journalSuffix = ".journal"
	// journalHeader: payload length (4), CRC-32C of those 4 bytes (4) and
	// CRC-32C of the payload (4). The length has its own checksum, so that
	// a damaged length is never taken for a record that runs past the end.
	journalHeader = 12
	// The smallest payload: an oid limit and a transaction count.
	journalMinPayload = 12
	// A group larger than this goes straight into bbolt.
	journalMaxRecord = 64 << 20
	// Apply once the journal holds this many transactions or bytes (or
	// when a read or Close needs it, or after journalMaxAge).
	journalMaxTxns  = 512
	journalMaxBytes = 32 << 20
	journalMaxAge   = 200 * time.Millisecond
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// journal is the append-only file. Only the committer goroutine appends
// and truncates; Open reads it.
type journal struct {
	f    *os.File
	path string
	size int64
	sync bool
}

// journalTxn is one transaction as the journal holds it.
type journalTxn struct {
	tid     zodb.TID
	status  byte
	meta    zodb.TxnMeta
	records []zodb.DataRecord
}

// journalBatch is one journal record: a group of transactions and the oid
// limit persisted with them.
type journalBatch struct {
	oidLimit uint64
	txns     []journalTxn
}

// openJournal opens (creating if needed) the journal beside path and
// returns the batches it holds, in order.
func openJournal(path string, sync bool) (*journal, []journalBatch, error) {
	jpath := path + journalSuffix
	f, err := os.OpenFile(jpath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, err
	}
	if sync {
		// The file's name must survive a crash as well (also when an
		// earlier run created it and died before syncing the directory).
		if err := syncDir(filepath.Dir(jpath)); err != nil {
			f.Close()
			return nil, nil, err
		}
	}
	batches, good, err := readJournal(f, jpath)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if fi, err := f.Stat(); err != nil || fi.Size() != good {
		// A torn last record (never acknowledged): cut it off, so that
		// the next record does not end up in front of its remains.
		if err == nil {
			err = f.Truncate(good)
		}
		if err == nil && sync {
			err = f.Sync()
		}
		if err != nil {
			f.Close()
			return nil, nil, err
		}
	}
	return &journal{f: f, path: jpath, size: good, sync: sync}, batches, nil
}

// openJournal applies what the journal holds (a crash left it there:
// acknowledged transactions bbolt may not have) and opens it for the
// committer. A read-only store cannot apply it: it refuses to open while
// the journal holds transactions.
func (s *Store) openJournal() error {
	jpath := s.path + journalSuffix
	if s.opts.ReadOnly {
		f, err := os.Open(jpath)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("boltstore: %w", err)
		}
		defer f.Close()
		batches, _, err := readJournal(f, jpath)
		if err != nil {
			return err
		}
		for _, b := range batches {
			for _, t := range b.txns {
				if s.last.Less(t.tid) {
					return fmt.Errorf("boltstore: %s holds transactions not yet in %s (the last run ended without applying them); open it once read-write to apply them", jpath, s.path)
				}
			}
		}
		return nil
	}
	j, batches, err := openJournal(s.path, !s.opts.NoSync)
	if err != nil {
		return fmt.Errorf("boltstore: opening the journal of %s: %w", s.path, err)
	}
	var txns []journalTxn
	var limit uint64
	last := s.last
	for _, b := range batches {
		limit = max(limit, b.oidLimit)
		for _, t := range b.txns {
			if !last.Less(t.tid) {
				if len(txns) > 0 {
					j.close()
					return fmt.Errorf("boltstore: the journal %s is corrupt: tid %s after %s", j.path, t.tid, last)
				}
				continue // applied before the crash
			}
			txns = append(txns, t)
			last = t.tid
		}
	}
	if len(txns) > 0 || limit > s.oidLimit {
		if err := s.db.Update(func(tx *bolt.Tx) error { return putTxns(tx, txns, limit) }); err != nil {
			j.close()
			return fmt.Errorf("boltstore: applying the journal %s to %s: %w", j.path, s.path, err)
		}
		s.last = last
		s.oidLimit = max(s.oidLimit, limit)
		s.oidNext = s.oidLimit
		if len(txns) > 0 {
			s.log.Info("applied the transactions the journal held from the last run", "storage", s.opts.Name,
				"transactions", len(txns), "first_tid", txns[0].tid, "last_tid", last)
		}
	}
	if err := j.reset(); err != nil {
		j.close()
		return fmt.Errorf("boltstore: %w", err)
	}
	if s.opts.NoJournal {
		return j.close()
	}
	s.j = j
	return nil
}

// closeJournal closes the journal file (Close has applied it).
func (s *Store) closeJournal() {
	if s.j != nil {
		s.j.close()
	}
}

// readJournal decodes every record of f; good is the length of the valid
// prefix (a torn last record is not part of it).
//
// One goroutine appends and fdatasyncs one record at a time, so a crash
// can tear only the last record (and leave anything after it: zeros or
// old bytes of a file system that persisted pages out of order). A record
// that does not check is therefore torn when no valid record follows it,
// and the journal is corrupt when one does.
func readJournal(f *os.File, path string) (batches []journalBatch, good int64, err error) {
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, 0, err
	}
	off := 0
	for off < len(data) {
		n, ok := checkRecord(data[off:])
		if !ok {
			if at := nextValidRecord(data, off+1); at >= 0 {
				return nil, 0, fmt.Errorf("boltstore: the journal %s is corrupt: the record at byte %d does not check, and a valid one follows at byte %d (the file needs repair by hand; nothing was changed)", path, off, at)
			}
			break // the torn last record
		}
		b, err := decodeJournalBatch(data[off+journalHeader : off+n])
		if err != nil {
			return nil, 0, fmt.Errorf("boltstore: the journal %s is corrupt: record at byte %d: %v", path, off, err)
		}
		batches = append(batches, b)
		off += n
	}
	return batches, int64(off), nil
}

// checkRecord tells whether rec starts with a whole record whose
// checksums hold, and its length with the header.
func checkRecord(rec []byte) (int, bool) {
	if len(rec) < journalHeader {
		return 0, false
	}
	if crc32.Checksum(rec[:4], crcTable) != binary.BigEndian.Uint32(rec[4:8]) {
		return 0, false
	}
	n := uint64(binary.BigEndian.Uint32(rec[:4]))
	if n < journalMinPayload || n > uint64(len(rec)-journalHeader) {
		return 0, false
	}
	end := journalHeader + int(n)
	if crc32.Checksum(rec[journalHeader:end], crcTable) != binary.BigEndian.Uint32(rec[8:12]) {
		return 0, false
	}
	return end, true
}

// nextValidRecord is the offset of the first whole, valid record at or
// after from (-1 if none).
func nextValidRecord(data []byte, from int) int {
	for at := from; at+journalHeader <= len(data); at++ {
		if _, ok := checkRecord(data[at:]); ok {
			return at
		}
	}
	return -1
}

// append writes one record and makes it durable. A failure leaves a
// possibly torn record at the end; the store is broken then and the next
// Open discards it.
func (j *journal) append(payload []byte) error {
	rec := frameRecord(payload)
	if _, err := j.f.WriteAt(rec, j.size); err != nil {
		j.f.Truncate(j.size) // best effort: not acknowledged, not replayed
		return fmt.Errorf("journal %s: %w", j.path, err)
	}
	if j.sync {
		if err := fdatasync(j.f); err != nil {
			j.f.Truncate(j.size)
			return fmt.Errorf("journal %s: %w", j.path, err)
		}
	}
	j.size += int64(len(rec))
	return nil
}

// frameRecord is a journal record: header and payload.
func frameRecord(payload []byte) []byte {
	rec := make([]byte, journalHeader, journalHeader+len(payload))
	binary.BigEndian.PutUint32(rec[:4], uint32(len(payload)))
	binary.BigEndian.PutUint32(rec[4:8], crc32.Checksum(rec[:4], crcTable))
	binary.BigEndian.PutUint32(rec[8:12], crc32.Checksum(payload, crcTable))
	return append(rec, payload...)
}

// reset empties the journal once everything in it is in bbolt.
func (j *journal) reset() error {
	if j.size == 0 {
		return nil
	}
	return j.empty()
}

// empty truncates the journal and syncs that, whatever its size says.
func (j *journal) empty() error {
	if err := j.f.Truncate(0); err != nil {
		return fmt.Errorf("journal %s: %w", j.path, err)
	}
	// From here on the file is empty, whatever the sync says: the next
	// record goes at its start, not after a hole.
	j.size = 0
	if j.sync {
		if err := j.f.Sync(); err != nil {
			return fmt.Errorf("journal %s: %w", j.path, err)
		}
	}
	return nil
}

func (j *journal) close() error { return j.f.Close() }

// encodeJournalBatch: oid limit (8), count (4), then per transaction its
// tid (8), its header as the txns bucket stores it (length-prefixed), the
// record count (4) and per record its oid (8) and its value as the
// records bucket stores it (length-prefixed).
func encodeJournalBatch(b journalBatch) []byte {
	n := 12
	for _, t := range b.txns {
		n += 8 + 4 + 64 + len(t.meta.User) + len(t.meta.Description) + len(t.meta.Extension) + 4 + 8*len(t.records)
		for _, r := range t.records {
			n += 8 + 4 + 9 + len(r.Data)
		}
	}
	out := make([]byte, 0, n)
	out = binary.BigEndian.AppendUint64(out, b.oidLimit)
	out = binary.BigEndian.AppendUint32(out, uint32(len(b.txns)))
	for _, t := range b.txns {
		out = append(out, t.tid[:]...)
		oids := make([]zodb.OID, len(t.records))
		for i, r := range t.records {
			oids[i] = r.OID
		}
		hdr := encodeTxn(txnHeader{status: t.status, meta: t.meta, oids: oids})
		out = binary.BigEndian.AppendUint32(out, uint32(len(hdr)))
		out = append(out, hdr...)
		out = binary.BigEndian.AppendUint32(out, uint32(len(t.records)))
		for _, r := range t.records {
			out = append(out, r.OID[:]...)
			v := encodeRecord(r)
			out = binary.BigEndian.AppendUint32(out, uint32(len(v)))
			out = append(out, v...)
		}
	}
	return out
}

func decodeJournalBatch(p []byte) (journalBatch, error) {
	var b journalBatch
	short := errors.New("record ends early")
	take := func(n int) ([]byte, error) {
		if n < 0 || len(p) < n {
			return nil, short
		}
		v := p[:n]
		p = p[n:]
		return v, nil
	}
	u32 := func() (int, error) {
		v, err := take(4)
		if err != nil {
			return 0, err
		}
		x := binary.BigEndian.Uint32(v)
		if x > 1<<30 { // no count or length in a record comes near
			return 0, fmt.Errorf("a count of %d", x)
		}
		return int(x), nil
	}
	v, err := take(8)
	if err != nil {
		return b, err
	}
	b.oidLimit = binary.BigEndian.Uint64(v)
	count, err := u32()
	if err != nil {
		return b, err
	}
	if count > len(p)/8 {
		return b, fmt.Errorf("%d transactions in %d bytes", count, len(p))
	}
	var prev zodb.TID
	for range count {
		var t journalTxn
		v, err := take(8)
		if err != nil {
			return b, err
		}
		copy(t.tid[:], v)
		if !prev.Less(t.tid) {
			return b, fmt.Errorf("tid %s does not follow %s", t.tid, prev)
		}
		prev = t.tid
		n, err := u32()
		if err != nil {
			return b, err
		}
		hv, err := take(n)
		if err != nil {
			return b, err
		}
		h, err := decodeTxn(hv)
		if err != nil {
			return b, err
		}
		t.status, t.meta = h.status, h.meta
		nrec, err := u32()
		if err != nil {
			return b, err
		}
		if nrec != len(h.oids) || nrec > len(p)/12 {
			return b, fmt.Errorf("transaction %s: %d records for %d oids", t.tid, nrec, len(h.oids))
		}
		t.records = make([]zodb.DataRecord, nrec)
		for i := range nrec {
			ov, err := take(8)
			if err != nil {
				return b, err
			}
			oid := zodb.OID(ov)
			if oid != h.oids[i] {
				return b, fmt.Errorf("transaction %s: record %d is for %s, the header says %s", t.tid, i, oid, h.oids[i])
			}
			n, err := u32()
			if err != nil {
				return b, err
			}
			rv, err := take(n)
			if err != nil {
				return b, err
			}
			if n < 9 || rv[0]&^flagNoData != 0 || rv[0] == flagNoData && n != 9 {
				return b, fmt.Errorf("transaction %s: record %d is malformed", t.tid, i)
			}
			if t.records[i], err = decodeRecord(oid, t.tid, rv); err != nil {
				return b, err
			}
		}
		b.txns = append(b.txns, t)
	}
	if len(p) != 0 {
		return b, fmt.Errorf("%d bytes after the last transaction", len(p))
	}
	return b, nil
}
