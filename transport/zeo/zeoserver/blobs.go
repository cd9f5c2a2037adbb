package zeoserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
)

// blobChunkSize is the size of the receiveBlobChunk messages sendBlob
// streams, ZEO's own.
const blobChunkSize = 59000

// blobUpload is a blob file being received: storeBlobStart opens it in
// the spool directory, storeBlobChunk appends, storeBlobEnd hands it to the
// transaction. Only the reader goroutine touches it.
type blobUpload struct {
	f    *os.File
	size int64
}

// blobStorage is the connection's storage as a blob storage, when it keeps
// blobs now.
func (c *conn) blobStorage() (zodb.BlobStorage, bool) {
	bs, ok := c.ss.st.(zodb.BlobStorage)
	if !ok || !bs.SupportsBlobs() {
		return nil, false
	}
	return bs, true
}

func noBlobSupport() error {
	return zodb.NewUnsupported("this storage does not keep blobs (it does not advertise IBlobStorage)")
}

// dropUpload closes and removes an unfinished upload.
func (c *conn) dropUpload() {
	u := c.upload
	if u == nil {
		return
	}
	c.upload = nil
	u.f.Close()
	c.removeBlobFile(u.f.Name())
}

func (c *conn) removeBlobFile(name string) {
	if err := os.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		c.logger().Error("cannot remove a blob upload", "file", name, "error", err)
	}
}

func (c *conn) storeBlobStart(ctx context.Context, args []any) (any, error) {
	if err := argc("storeBlobStart", args, 0, 0); err != nil {
		return nil, err
	}
	if c.readOnly {
		return nil, zodb.NewReadOnlyError()
	}
	if _, ok := c.blobStorage(); !ok {
		return nil, noBlobSupport()
	}
	if c.upload != nil {
		c.dropUpload()
		return nil, zodb.NewStorageTransactionError("storeBlobStart while another blob upload is unfinished")
	}
	f, err := os.CreateTemp(c.srv.cfg.SpoolDir, "zeoraid-blob-*")
	if err != nil {
		return nil, zodb.NewStorageError("cannot create a file for a blob upload: %v", err)
	}
	c.upload = &blobUpload{f: f}
	return nil, nil
}

func (c *conn) storeBlobChunk(ctx context.Context, args []any) (any, error) {
	if err := argc("storeBlobChunk", args, 1, 1); err != nil {
		c.dropUpload()
		return nil, err
	}
	chunk, err := wire.AsBytes(args[0])
	if err != nil {
		c.dropUpload()
		return nil, typeErr("storeBlobChunk", err)
	}
	u := c.upload
	if u == nil {
		return nil, zodb.NewStorageTransactionError("storeBlobChunk without storeBlobStart")
	}
	if _, err := u.f.Write(chunk); err != nil {
		c.dropUpload()
		return nil, zodb.NewStorageError("cannot write a blob upload: %v", err)
	}
	u.size += int64(len(chunk))
	return nil, nil
}

// storeBlobEnd attaches the uploaded file to the transaction's store of
// oid (ClientStorage sends storea first; the blob's data supersedes it, as
// Python's server replays the blob stores after the others).
func (c *conn) storeBlobEnd(ctx context.Context, args []any) (any, error) {
	u := c.upload
	if u == nil {
		return nil, zodb.NewStorageTransactionError("storeBlobEnd without storeBlobStart")
	}
	c.upload = nil
	name := u.f.Name()
	if err := u.f.Close(); err != nil {
		c.removeBlobFile(name)
		return nil, zodb.NewStorageError("cannot write a blob upload: %v", err)
	}
	if err := c.attachBlob("storeBlobEnd", args, name, u.size); err != nil {
		c.removeBlobFile(name)
		return nil, err
	}
	return nil, nil
}

// attachBlob parses (oid, serial, data, txn id) and puts the blob file
// name (size bytes) on the transaction's store of oid. The transaction
// owns the file from here: it is removed when the transaction ends.
func (c *conn) attachBlob(method string, args []any, name string, size int64) error {
	if err := argc(method, args, 4, 4); err != nil {
		return err
	}
	oid, serial, err := oidSerial(method, args[0], args[1])
	if err != nil {
		return err
	}
	data, err := c.storeData(method, args[2], args[3], oid)
	if err != nil {
		return err
	}
	t, _, err := c.checkTxn(args[3], true)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.txn != t || t.zt != nil {
		return zodb.NewStorageTransactionError("%s after the transaction's vote", method)
	}
	for i := len(t.ops) - 1; i >= 0; i-- {
		op := &t.ops[i]
		if op.Kind != zodb.OpStore || op.OID != oid {
			continue
		}
		if op.Blob != nil {
			c.removeBlobFile(op.Blob.Path)
		}
		// Nothing writes to an upload after storeBlobEnd: a storage may
		// link it.
		stored := zodb.Op{Kind: zodb.OpStore, OID: oid, Serial: serial, Blob: &zodb.Blob{Path: name, Size: size, Immutable: true}}
		c.spoolData(t, &stored, data)
		*op = stored
		t.blobs = append(t.blobs, name)
		return nil
	}
	return zodb.NewStorageTransactionError("%s for %s, which the transaction did not store", method, oid)
}

// storeBlobShared takes a blob that a client sharing the storage's blob
// directory (ClientStorage with shared_blob_dir) wrote there itself: args
// are (oid, serial, data, file name, txn id), the file name one that
// ZODB's blob_mkstemp made in the oid's directory. Only a storage whose
// blob directory is complete and in ZODB's layout (zodb.SharedBlobStorage,
// the built-in backend) accepts it; a proxy refuses, as nothing there
// shares a directory with its clients. The transaction owns the file from
// here, as an upload (the storage links or copies it at vote; it is
// removed when the transaction ends).
func (c *conn) storeBlobShared(ctx context.Context, args []any) (any, error) {
	if err := argc("storeBlobShared", args, 5, 5); err != nil {
		return nil, err
	}
	name, ok := args[3].(string)
	if !ok {
		return nil, typeErr("storeBlobShared", fmt.Errorf("the file name is %T, want str", args[3]))
	}
	if !zodb.IsSharedBlobTempName(name) {
		// ZEO logs this as an attack: a name that could reach outside
		// the oid's directory, or a file that is not a blob upload.
		c.logger().Error("bad file name in storeBlobShared: refused", "name", name)
		return nil, zodb.NewValueError("bad blob file name %q", name)
	}
	if c.readOnly {
		return nil, zodb.NewReadOnlyError()
	}
	bs, ok := c.blobStorage()
	if !ok {
		return nil, noBlobSupport()
	}
	shared, ok := bs.(zodb.SharedBlobStorage)
	if !ok {
		return nil, zodb.NewUnsupported("this server does not share a blob directory with its clients: configure ClientStorage without shared_blob_dir")
	}
	oid, _, err := oidSerial("storeBlobShared", args[0], args[1])
	if err != nil {
		return nil, err
	}
	path := filepath.Join(shared.SharedBlobDir(), zodb.BlobOIDPath(oid), name)
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, zodb.NewStorageError("storeBlobShared: the blob file: %v (client and server must share the blob directory %s)", err, shared.SharedBlobDir())
	}
	if !fi.Mode().IsRegular() {
		c.logger().Error("storeBlobShared names something that is not a regular file: refused", "path", path, "mode", fi.Mode().String())
		return nil, zodb.NewValueError("the blob file %s is not a regular file", name)
	}
	if err := c.attachBlob("storeBlobShared", []any{args[0], args[1], args[2], args[4]}, path, fi.Size()); err != nil {
		// The client left the file to the server: nothing else removes it.
		c.removeBlobFile(path)
		return nil, err
	}
	return nil, nil
}

// dropBlobs removes the blob files of a transaction that has ended (the
// storage copied what it keeps at vote); c.mu is held.
func (c *conn) dropBlobs(t *zeoTxn) {
	for _, name := range t.blobs {
		c.removeBlobFile(name)
	}
	t.blobs = nil
}

// sendBlob streams the blob of (oid, serial) to the client as
// receiveBlobStart, receiveBlobChunk..., receiveBlobStop, then replies
// None (the reply after the last chunk, as ClientStorage expects). The
// chunks wait for room in the connection's queue: a large blob never
// sits in memory whole.
func (c *conn) sendBlob(ctx context.Context, args []any) (any, error) {
	if err := argc("sendBlob", args, 2, 2); err != nil {
		return nil, err
	}
	oid, serial, err := oidSerial("sendBlob", args[0], args[1])
	if err != nil {
		return nil, err
	}
	bs, ok := c.blobStorage()
	if !ok {
		return nil, noBlobSupport()
	}
	r, _, err := bs.OpenBlob(ctx, oid, serial)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if err := c.wc.SendWait(ctx, wire.NewOneWay("receiveBlobStart", oid, serial)); err != nil {
		return nil, err
	}
	buf := make([]byte, blobChunkSize)
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			// The wire layer encodes (copies) the chunk before SendWait
			// returns, so buf can be reused.
			if err := c.wc.SendWait(ctx, wire.NewOneWay("receiveBlobChunk", oid, serial, buf[:n])); err != nil {
				return nil, err
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			// The client has a partial file; closing is the only way to
			// tell it that the stream is broken.
			c.closeWith("reading the blob of %s@%s: %v", oid, serial, rerr)
			return nil, zodb.NewStorageError("reading the blob of %s@%s: %v", oid, serial, rerr)
		}
	}
	if err := c.wc.SendWait(ctx, wire.NewOneWay("receiveBlobStop", oid, serial)); err != nil {
		return nil, err
	}
	return nil, nil
}
