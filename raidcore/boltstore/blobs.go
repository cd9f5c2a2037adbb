package boltstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/txnplan"
	bolt "go.etcd.io/bbolt"
)

// Blobs.
//
// A revision's blob is a file beside the data file, in <path>.blobs, laid
// out as ZODB's blob directories are (the "bushy" layout, named in the
// .layout file), so that a ClientStorage on the same host can use the
// directory as a shared blob directory:
//
//	.layout                          "bushy"
//	tmp/                             for clients sharing the directory
//	0x00/.../0x2a/0x03ecb3a6b1e2a2bb.blob
//	                                 committed blobs: one directory level per
//	                                 oid byte, the file named by the tid
//	                                 (zodb.BlobOIDPath, zodb.BlobFileName);
//	                                 read-only
//	.staging/<tid>-<oid>.blob        blobs of voted transactions, fsynced at
//	                                 vote (16 hex digits each)
//
// and the bbolt bucket "blobs" (oid|tid -> size) says which revisions have
// one. The vote copies (or links) each blob the transaction brings into
// .staging and fsyncs the file and the directory; the group write records
// the blob keys with the records (one bbolt transaction), and only after
// that durable write renames the staged files into place. A crash before
// the write leaves staged files of uncommitted transactions, which Open
// removes; a crash after it leaves committed blobs still in .staging,
// which Open moves into place (a revision is never committed without its
// blob: the staged file was durable before the write). Loads look in
// .staging too, for the moment between the write and the rename.
//
// Pack deletes the blob keys of the revisions it drops and records them in
// "blob_trash" in the same bbolt transaction; the files go after that
// write, and the trash entries after the files. Open empties the trash
// left by a crash, so no file outlives its record for longer than a
// restart, and none goes before its record.
//
// Undo gives the undoing revision the blob of the revision it goes back
// to (a hard link of the immutable committed file), as ZODB's blob
// storages do.

var (
	bucketBlobs     = []byte("blobs")
	bucketBlobTrash = []byte("blob_trash")
)

const stagingDir = ".staging"

// stagedBlob is a blob file staged for a voted transaction.
type stagedBlob struct {
	oid  zodb.OID
	size int64
}

var _ zodb.BlobStorage = (*Store)(nil)

// SupportsBlobs implements zodb.BlobStorage.
func (s *Store) SupportsBlobs() bool { return true }

// BlobDir is the directory holding the store's blobs.
func (s *Store) BlobDir() string { return s.path + ".blobs" }

var _ zodb.SharedBlobStorage = (*Store)(nil)

// SharedBlobDir implements zodb.SharedBlobStorage: the blob directory is
// in ZODB's bushy layout and holds every committed blob.
func (s *Store) SharedBlobDir() string { return s.BlobDir() }

func (s *Store) blobPath(oid zodb.OID, tid zodb.TID) string {
	return filepath.Join(s.BlobDir(), zodb.BlobOIDPath(oid), zodb.BlobFileName(tid))
}

// initBlobDir creates the blob directory with its layout marker, or checks
// the marker of an existing one.
func (s *Store) initBlobDir() error {
	dir := s.BlobDir()
	marker := filepath.Join(dir, zodb.BlobLayoutMarker)
	b, err := os.ReadFile(marker)
	switch {
	case err == nil:
		if layout := strings.TrimSpace(string(b)); layout != zodb.BushyLayout {
			return fmt.Errorf("blob directory %s: layout %q (in %s), want %q", dir, layout, zodb.BlobLayoutMarker, zodb.BushyLayout)
		}
		return os.MkdirAll(filepath.Join(dir, "tmp"), 0o700)
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("blob directory %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("blob directory: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("blob directory: %w", err)
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			return fmt.Errorf("blob directory %s has files but no %s marker: not laid out by this version; move it away", dir, zodb.BlobLayoutMarker)
		}
	}
	// ZODB's blob directories have a tmp directory, where a client
	// sharing the directory makes its uncommitted blob files
	// (ClientStorage.temporaryDirectory).
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o700); err != nil {
		return fmt.Errorf("blob directory: %w", err)
	}
	tmp := marker + ".new"
	if err := os.WriteFile(tmp, []byte(zodb.BushyLayout), 0o600); err != nil {
		return fmt.Errorf("blob directory: %w", err)
	}
	if err := os.Rename(tmp, marker); err != nil {
		return fmt.Errorf("blob directory: %w", err)
	}
	return syncDir(dir)
}

func (s *Store) stagedPath(oid zodb.OID, tid zodb.TID) string {
	return filepath.Join(s.BlobDir(), stagingDir, tid.String()+"-"+oid.String()+".blob")
}

// OpenBlob implements zodb.BlobStorage.
func (s *Store) OpenBlob(ctx context.Context, oid zodb.OID, serial zodb.TID) (io.ReadCloser, int64, error) {
	if err := s.waitApplied(ctx); err != nil {
		return nil, 0, err
	}
	s.mu.Lock()
	last, err := s.last, s.checkOpen()
	s.mu.Unlock()
	if err != nil {
		return nil, 0, err
	}
	if last.Less(serial) {
		// Not visible yet (or never committed).
		return nil, 0, &zodb.POSKeyError{OID: oid}
	}
	var size int64
	found := false
	if err := s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketBlobs); b != nil {
			if v := b.Get(recordKey(oid, serial)); v != nil {
				size, found = int64(u64(v)), true
			}
		}
		return nil
	}); err != nil {
		return nil, 0, s.wrap(err)
	}
	if !found {
		return nil, 0, &zodb.POSKeyError{OID: oid}
	}
	// Just written, the file may still be on its way from .staging.
	for _, p := range []string{s.blobPath(oid, serial), s.stagedPath(oid, serial), s.blobPath(oid, serial)} {
		f, err := os.Open(p)
		if err == nil {
			return f, size, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, 0, zodb.NewStorageError("storage %s: the blob of %s@%s: %v", s.opts.Name, oid, serial, err)
		}
	}
	return nil, 0, zodb.NewStorageError("storage %s: the blob file of %s@%s is missing from %s (the record says it has one)", s.opts.Name, oid, serial, s.BlobDir())
}

// stageBlobs copies the blobs of a voted plan into .staging (and, for an
// undo, links the blob of the revision it goes back to) and makes them
// durable. On error nothing stays staged.
func (s *Store) stageBlobs(p *txnplan.Plan) ([]stagedBlob, error) {
	undone := map[zodb.OID]bool{}
	for _, oid := range p.Changed {
		undone[oid] = true
	}
	var staged []stagedBlob
	fail := func(err error) ([]stagedBlob, error) {
		s.unstage(p.TID, staged)
		return nil, zodb.NewStorageError("storage %s: staging the blobs of %s: %v", s.opts.Name, p.TID, err)
	}
	for _, r := range p.Records {
		switch {
		case r.Blob != nil:
			if err := os.MkdirAll(filepath.Join(s.BlobDir(), stagingDir), 0o700); err != nil {
				return fail(err)
			}
			n, err := stageFile(r.Blob, s.stagedPath(r.OID, p.TID), !s.opts.NoSync)
			if err != nil {
				return fail(err)
			}
			if n != r.Blob.Size {
				os.Remove(s.stagedPath(r.OID, p.TID))
				return fail(fmt.Errorf("the blob of %s has %d bytes, not the %d announced", r.OID, n, r.Blob.Size))
			}
			staged = append(staged, stagedBlob{oid: r.OID, size: n})
		case undone[r.OID] && !r.NoData && !r.DataTxn.IsZero():
			src, size, ok, err := s.blobFile(r.OID, r.DataTxn)
			if err != nil {
				return fail(err)
			}
			if !ok {
				continue
			}
			if err := os.MkdirAll(filepath.Join(s.BlobDir(), stagingDir), 0o700); err != nil {
				return fail(err)
			}
			if err := os.Link(src, s.stagedPath(r.OID, p.TID)); err != nil {
				if _, err := copyFile(src, s.stagedPath(r.OID, p.TID)); err != nil {
					return fail(err)
				}
			}
			staged = append(staged, stagedBlob{oid: r.OID, size: size})
		}
	}
	if len(staged) > 0 && !s.opts.NoSync {
		if err := syncDir(filepath.Join(s.BlobDir(), stagingDir)); err != nil {
			return fail(err)
		}
	}
	return staged, nil
}

// blobFile finds the file of a revision's blob: written, or staged by a
// transaction still queued for its write.
func (s *Store) blobFile(oid zodb.OID, tid zodb.TID) (path string, size int64, ok bool, err error) {
	for _, p := range []string{s.blobPath(oid, tid), s.stagedPath(oid, tid)} {
		fi, err := os.Stat(p)
		if err == nil {
			return p, fi.Size(), true, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return "", 0, false, err
		}
	}
	return "", 0, false, nil
}

// unstage removes the staged blobs of a transaction that will not be
// written.
func (s *Store) unstage(tid zodb.TID, staged []stagedBlob) {
	for _, b := range staged {
		if err := os.Remove(s.stagedPath(b.oid, tid)); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Error("cannot remove a staged blob", "oid", b.oid, "tid", tid, "error", err)
		}
	}
}

// putBlobKeys records a written transaction's blobs (in the group write).
func putBlobKeys(tx *bolt.Tx, tid zodb.TID, staged []stagedBlob) error {
	if len(staged) == 0 {
		return nil
	}
	b := tx.Bucket(bucketBlobs)
	for _, sb := range staged {
		if err := b.Put(recordKey(sb.oid, tid), b64(uint64(sb.size))); err != nil {
			return err
		}
	}
	return nil
}

// placeBlobs moves the staged blobs of a written transaction into place.
// A failure leaves them in .staging, where loads still find them and the
// next Open moves them.
func (s *Store) placeBlobs(tid zodb.TID, staged []stagedBlob) {
	for _, b := range staged {
		if err := s.place(b.oid, tid); err != nil {
			s.log.Error("cannot move a committed blob into place; it stays in .staging until the next start", "oid", b.oid, "tid", tid, "error", err)
		}
	}
}

func (s *Store) place(oid zodb.OID, tid zodb.TID) error {
	final, staged := s.blobPath(oid, tid), s.stagedPath(oid, tid)
	var err error
	// A pack may remove the oid's directory, empty, between MkdirAll and
	// Rename: try again.
	for range 3 {
		if err = os.MkdirAll(filepath.Dir(final), 0o700); err != nil {
			return err
		}
		if err = setNotWritable(staged, filepath.Dir(final)); err != nil {
			return err
		}
		if err = os.Rename(staged, final); !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return err
}

// setNotWritable makes a blob file read-only with the readability of the
// directory it goes to, as ZODB's set_not_writable does for committed
// blobs (a client sharing the directory sees the modes it expects).
func setNotWritable(path, dir string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	di, err := os.Stat(dir)
	if err != nil {
		return err
	}
	return os.Chmod(path, fi.Mode().Perm()&^0o222|di.Mode().Perm()&0o444)
}

// recoverBlobs runs at Open: staged blobs of committed transactions go
// into place, the others are removed, and pack's trash is emptied.
func (s *Store) recoverBlobs() error {
	if err := s.initBlobDir(); err != nil {
		return err
	}
	dir := filepath.Join(s.BlobDir(), stagingDir)
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var placed, removed int
	for _, e := range entries {
		name := e.Name()
		tidHex, rest, ok := strings.Cut(strings.TrimSuffix(name, ".blob"), "-")
		tid, err1 := zodb.ParseTID(tidHex)
		oid, err2 := zodb.ParseOID(rest)
		committed := false
		if ok && err1 == nil && err2 == nil && strings.HasSuffix(name, ".blob") && !s.last.Less(tid) {
			s.db.View(func(tx *bolt.Tx) error {
				committed = tx.Bucket(bucketBlobs).Get(recordKey(oid, tid)) != nil
				return nil
			})
		}
		if committed {
			if err := s.place(oid, tid); err != nil {
				return fmt.Errorf("moving the committed blob %s into place: %w", name, err)
			}
			placed++
			continue
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			return err
		}
		removed++
	}
	if placed+removed > 0 {
		s.log.Info("blobs left by an interrupted commit", "moved_into_place", placed, "removed_uncommitted", removed)
	}
	n, err := s.emptyBlobTrash()
	if n > 0 {
		s.log.Info("removed the blob files of an interrupted pack", "files", n)
	}
	return err
}

// trashBlob moves a dropped revision's blob key to the trash (pack, in
// its bbolt transaction).
func trashBlob(tx *bolt.Tx, key []byte) error {
	blobs := tx.Bucket(bucketBlobs)
	if blobs.Get(key) == nil {
		return nil
	}
	if err := blobs.Delete(key); err != nil {
		return err
	}
	return tx.Bucket(bucketBlobTrash).Put(append([]byte{}, key...), nil)
}

// emptyBlobTrash removes the files of trashed blob keys, then the keys.
func (s *Store) emptyBlobTrash() (int, error) {
	total := 0
	for {
		var keys [][]byte
		s.db.View(func(tx *bolt.Tx) error {
			c := tx.Bucket(bucketBlobTrash).Cursor()
			for k, _ := c.First(); k != nil && len(keys) < packBatch; k, _ = c.Next() {
				keys = append(keys, append([]byte{}, k...))
			}
			return nil
		})
		if len(keys) == 0 {
			return total, nil
		}
		if s.beforeTrashRemoval != nil {
			if err := s.beforeTrashRemoval(); err != nil {
				return total, err
			}
		}
		for _, k := range keys {
			oid, tid := splitRecordKey(k)
			p := s.blobPath(oid, tid)
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return total, err
			}
			os.Remove(filepath.Dir(p)) // the oid's directory, if now empty
		}
		if err := s.db.Update(func(tx *bolt.Tx) error {
			t := tx.Bucket(bucketBlobTrash)
			for _, k := range keys {
				if err := t.Delete(k); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return total, err
		}
		total += len(keys)
	}
}

// stageFile puts a transaction's blob file at dst, durably when sync: a
// hard link when the file is immutable and on the same file system (a ZEO
// server's upload in the data directory's spool: no copy), else a copy.
func stageFile(b *zodb.Blob, dst string, sync bool) (int64, error) {
	if b.Immutable {
		if err := os.Link(b.Path, dst); err == nil {
			f, err := os.Open(dst)
			if err != nil {
				os.Remove(dst)
				return 0, err
			}
			defer f.Close()
			fi, err := f.Stat()
			if err == nil && sync {
				err = f.Sync()
			}
			if err != nil {
				os.Remove(dst)
				return 0, err
			}
			return fi.Size(), nil
		}
	}
	return copyFile(b.Path, dst)
}

// copyFile copies src to a new file dst and fsyncs it; it returns the
// bytes copied.
func copyFile(src, dst string) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, in) // copy_file_range where the kernel can
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
		return 0, err
	}
	return n, nil
}

// syncDir fsyncs a directory (its entries).
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
