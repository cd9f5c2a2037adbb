package integration

import (
	"os"
	"testing"
)

// blobSuiteTests is the number of tests zodb_suites.py composes with
// ZEORAID_SUITE_SET=blobs (ZEO 6.0.0's testZEO.CommonBlobTests and
// BlobAdaptedFileStorageTests.checkStoreAndLoadBlob, 6 tests, plus ZODB
// 6.3's testblob.storage_reusable_suite with a non-shared blob cache, as
// ZEO's test_suite adds it, 20 tests); no test is long.
var blobSuiteTests = map[string]int{"1": 26, "2": 26}

// blobSuiteFloors are the pass counts against `zeoraid backend`, measured
// 2026-12-07 on the reference machine (2 cores, ZODB 6.3, ZEO 6.0.0), the
// same in both encodings: 25 of 26 as root, 26 as an ordinary user (see
// knownBlobNonPasses). A real ZEO server (runzeo, FileStorage with a
// blob-dir) passes the same 25 as root.
var blobSuiteFloors = map[string]int{"Z5/1": 25, "Z5/2": 25, "M5/1": 25, "M5/2": 25}

// knownBlobNonPasses explains the blob tests that do not pass.
func knownBlobNonPasses() map[string]string {
	known := map[string]string{}
	if os.Geteuid() == 0 {
		// The doctest expects PermissionError when it opens a committed
		// (read-only) blob of the client's cache for writing; root may,
		// and the next example then reads the file it truncated. It
		// passes as an ordinary user (checked by hand with runuser), and
		// fails as root against a real ZEO server too.
		known["blob_transaction_txt"] = "environment: run as root, read-only blob cache files are writable"
	}
	return known
}

// TestZODBBlobSuitesAgainstBackend runs ZEO's blob tests and ZODB's
// reusable blob storage suite through ClientStorage with a non-shared
// blob cache against `zeoraid backend` (a fresh data directory per
// storage name), in both encodings.
func TestZODBBlobSuitesAgainstBackend(t *testing.T) {
	runZODBSuites(t, suiteRun{
		kind: "backend", set: "blobs", tests: blobSuiteTests, floors: blobSuiteFloors,
		levels: map[string]string{"Z5": "2", "M5": "2"}, known: knownBlobNonPasses(),
		knownOnlyIn: map[string]string{}, failOnNew: true,
	})
}

// proxyBlobSuiteFloors: through `zeoraid proxy` over three `zeoraid
// backend`s, measured 2026-12-07 like blobSuiteFloors: 24 of 26 in both
// encodings (knownProxyBlobNonPasses).
var proxyBlobSuiteFloors = map[string]int{"Z5/1": 24, "Z5/2": 24, "M5/1": 24, "M5/2": 24}

// knownProxyBlobNonPasses: the backend's, plus two doctests that print
// oid numbers: the proxy's oids start above each backend's own counter (it
// takes one oid from each to learn where to start, so that no oid is ever
// handed out twice), so the first new oid is 2, not the 1 they expect.
func knownProxyBlobNonPasses() map[string]string {
	known := knownBlobNonPasses()
	known["tests.testblob.is_blob_record"] = "expected: the doctest assumes the first new oid is 1; through the proxy it is 2"
	known["blob_transaction_txt"] = "expected: the doctest prints oid 0x01 in a ConflictError; through the proxy it is 0x02 (and, as root, the PermissionError check)"
	return known
}

// TestZODBBlobSuitesThroughProxy runs the blob suites of
// TestZODBBlobSuitesAgainstBackend through `zeoraid proxy` over three
// fresh `zeoraid backend`s per storage.
func TestZODBBlobSuitesThroughProxy(t *testing.T) {
	runZODBSuites(t, suiteRun{
		kind: "proxy", set: "blobs", tests: blobSuiteTests, floors: proxyBlobSuiteFloors,
		levels: map[string]string{"Z5": "2", "M5": "2"}, known: knownProxyBlobNonPasses(),
		knownOnlyIn: map[string]string{}, failOnNew: true,
	})
}

// sharedBlobSuiteTests is the number of tests zodb_suites.py composes with
// ZEORAID_SUITE_SET=sharedblobs: testZEO.CommonBlobTests with a blob
// directory shared with the server (5, as ZEO's BlobWritableCacheTests
// runs them) and ZODB's reusable blob storage suite with a shared blob
// directory (20, ZEO's ClientStorageSharedBlobs).
var sharedBlobSuiteTests = map[string]int{"1": 25, "2": 25}

// sharedBlobSuiteFloors: against `zeoraid backend`, the client using the
// backend's own blob directory; measured 2026-12-07 like
// blobSuiteFloors: 24 of 25 as root, 25 as an ordinary user; a real ZEO
// server passes the same 24 as root.
var sharedBlobSuiteFloors = map[string]int{"Z5/1": 24, "Z5/2": 24, "M5/1": 24, "M5/2": 24}

// TestZODBSharedBlobSuitesAgainstBackend runs ZEO's blob tests and ZODB's
// reusable blob storage suite through ClientStorage with shared_blob_dir
// against `zeoraid backend`: the client writes new blobs into the
// backend's blob directory and reads committed ones there (ZODB's bushy
// layout), the server takes them with storeBlobShared. A proxy shares no
// directory; it is not run through one.
func TestZODBSharedBlobSuitesAgainstBackend(t *testing.T) {
	runZODBSuites(t, suiteRun{
		kind: "backend", set: "sharedblobs", tests: sharedBlobSuiteTests, floors: sharedBlobSuiteFloors,
		levels: map[string]string{"Z5": "2", "M5": "2"}, known: knownBlobNonPasses(),
		knownOnlyIn: map[string]string{}, failOnNew: true,
	})
}
