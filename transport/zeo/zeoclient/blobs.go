package zeoclient

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
)

// blobChunkSize is the size of the storeBlobChunk messages, ZEO's own.
const blobChunkSize = 59000

var _ zodb.BlobStorage = (*Client)(nil)

// SupportsBlobs implements zodb.BlobStorage: true when the server
// advertised IBlobStorage.
func (c *Client) SupportsBlobs() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.blobs
}

// sendBlobFile streams a store's blob file after its storea, as
// ClientStorage does (non-shared mode): storeBlobStart, the file in
// chunks read one at a time, storeBlobEnd.
func (c *Client) sendBlobFile(ctx context.Context, s *session, op *zodb.Op, data []byte, id int64) error {
	f, err := os.Open(op.Blob.Path)
	if err != nil {
		return zodb.NewStorageError("zeoclient: the blob of %s: %v", op.OID, err)
	}
	defer f.Close()
	if err := s.stream(ctx, "storeBlobStart"); err != nil {
		return err
	}
	buf := make([]byte, blobChunkSize)
	var sent int64
	for {
		n, rerr := io.ReadFull(f, buf)
		if n > 0 {
			// stream encodes (copies) the chunk before it returns.
			if err := s.stream(ctx, "storeBlobChunk", buf[:n]); err != nil {
				return err
			}
			sent += int64(n)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			// The server holds a partial upload: the connection must go
			// (there is no message that cancels an upload).
			s.wc.Close(fmt.Errorf("reading the blob of %s: %w", op.OID, rerr))
			return zodb.NewStorageError("zeoclient: reading the blob of %s: %v", op.OID, rerr)
		}
	}
	if sent != op.Blob.Size {
		s.wc.Close(fmt.Errorf("the blob file of %s changed while it was sent", op.OID))
		return zodb.NewStorageError("zeoclient: the blob of %s has %d bytes, not the %d announced", op.OID, sent, op.Blob.Size)
	}
	return s.stream(ctx, "storeBlobEnd", op.OID, op.Serial, nonNil(data), id)
}

// blobKey names one blob revision.
type blobKey struct {
	oid zodb.OID
	tid zodb.TID
}

// download receives one blob (receiveBlobStart/Chunk/Stop, on the
// session's reader) into a temporary file.
type download struct {
	f       *os.File
	started bool
	stopped bool
	size    int64
	err     error
	active  time.Time     // when the last message of the download arrived
	done    chan struct{} // closed when the sendBlob call is over
}

// OpenBlob implements zodb.BlobStorage: sendBlob makes the server stream
// the blob before it replies; the chunks go to a temporary file in
// Options.BlobTempDir, which is unlinked once open (it goes when the
// reader is closed). Downloads of the same revision take turns. There is
// no overall time limit besides ctx's: a download fails when nothing
// arrives for Options.BlobIdleTimeout.
func (c *Client) OpenBlob(ctx context.Context, oid zodb.OID, serial zodb.TID) (io.ReadCloser, int64, error) {
	if !c.SupportsBlobs() {
		return nil, 0, zodb.NewUnsupported("the server does not keep blobs (no IBlobStorage)")
	}
	key := blobKey{oid, serial}
	f, err := os.CreateTemp(c.opts.BlobTempDir, "zeoraid-blob-download-*")
	if err != nil {
		return nil, 0, zodb.NewStorageError("zeoclient: a file for the blob of %s: %v", oid, err)
	}
	dl := &download{f: f, done: make(chan struct{})}
	fail := func(err error) (io.ReadCloser, int64, error) {
		f.Close()
		os.Remove(f.Name())
		return nil, 0, err
	}
	c.dlMu.Lock()
	for {
		prev := c.downloads[key]
		if prev == nil {
			break
		}
		c.dlMu.Unlock()
		select {
		case <-prev.done:
		case <-ctx.Done():
			return fail(fmt.Errorf("zeoclient: sendBlob: waiting for another download of the same blob: %w", ctx.Err()))
		}
		c.dlMu.Lock()
	}
	c.downloads[key] = dl
	c.dlMu.Unlock()
	defer func() {
		c.dlMu.Lock()
		if c.downloads[key] == dl {
			delete(c.downloads, key)
		}
		c.dlMu.Unlock()
		close(dl.done)
	}()

	s, err := c.session(ctx)
	if err != nil {
		return fail(err)
	}
	c.dlMu.Lock()
	dl.active = time.Now()
	c.dlMu.Unlock()
	p, err := s.start("sendBlob", nil, oid, serial)
	if err != nil {
		return fail(err)
	}
	// A large blob takes as long as it takes: the download fails when
	// nothing arrives for BlobIdleTimeout (or ctx ends), not after a
	// fixed time.
	idle := time.NewTimer(c.opts.BlobIdleTimeout)
	defer idle.Stop()
	for waiting := true; waiting; {
		select {
		case <-p.done:
			waiting = false
		case <-ctx.Done():
			return fail(fmt.Errorf("zeoclient: sendBlob of %s@%s: %w", oid, serial, ctx.Err()))
		case <-idle.C:
			c.dlMu.Lock()
			quiet := time.Since(dl.active)
			c.dlMu.Unlock()
			if quiet >= c.opts.BlobIdleTimeout {
				return fail(zodb.NewClientDisconnected("sendBlob of %s@%s: nothing received for %s", oid, serial, quiet.Round(time.Millisecond)))
			}
			idle.Reset(c.opts.BlobIdleTimeout - quiet)
		}
	}
	if p.err != nil {
		return fail(p.err)
	}
	c.dlMu.Lock()
	delete(c.downloads, key) // late chunks (there must be none) find nothing
	started, stopped, size, derr := dl.started, dl.stopped, dl.size, dl.err
	c.dlMu.Unlock()
	switch {
	case derr != nil:
		return fail(zodb.NewStorageError("zeoclient: receiving the blob of %s: %v", oid, derr))
	case !started || !stopped:
		return fail(zodb.NewProtocolError("sendBlob of %s@%s replied before the blob was sent", oid, serial))
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fail(zodb.NewStorageError("zeoclient: the blob of %s: %v", oid, err))
	}
	// Nobody else opens the file: it can go now and stays readable until
	// closed.
	os.Remove(f.Name())
	return f, size, nil
}

// receiveBlob handles receiveBlobStart, receiveBlobChunk and
// receiveBlobStop on the session's reader.
func (c *Client) receiveBlob(method string, args []any) {
	if len(args) < 2 {
		c.log.Error("malformed blob message from the server", "method", method)
		return
	}
	oid, err1 := wire.AsOID(args[0])
	tid, err2 := wire.AsTID(args[1])
	if err1 != nil || err2 != nil {
		c.log.Error("malformed blob message from the server", "method", method)
		return
	}
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	dl := c.downloads[blobKey{oid, tid}]
	if dl == nil {
		c.log.Warn("blob data nobody asked for", "method", method, "oid", oid, "serial", tid)
		return
	}
	dl.active = time.Now()
	if dl.err != nil {
		return
	}
	switch method {
	case "receiveBlobStart":
		if dl.started {
			dl.err = fmt.Errorf("receiveBlobStart twice")
		}
		dl.started = true
	case "receiveBlobChunk":
		if !dl.started || dl.stopped || len(args) != 3 {
			dl.err = fmt.Errorf("receiveBlobChunk out of order or malformed")
			return
		}
		chunk, err := wire.AsBytes(args[2])
		if err != nil {
			dl.err = err
			return
		}
		// Written on the reader: a slow disk slows the connection, it
		// does not fill memory.
		if _, err := dl.f.Write(chunk); err != nil {
			dl.err = err
			return
		}
		dl.size += int64(len(chunk))
	case "receiveBlobStop":
		if !dl.started || dl.stopped {
			dl.err = fmt.Errorf("receiveBlobStop out of order")
		}
		dl.stopped = true
	}
}
