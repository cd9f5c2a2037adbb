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
// same in both encodings: 24 of 26 as root, 25 as an ordinary user (see
// knownBlobNonPasses).
var blobSuiteFloors = map[string]int{"Z5/1": 24, "Z5/2": 24, "M5/1": 24, "M5/2": 24}

// knownBlobNonPasses explains the blob tests that do not pass.
func knownBlobNonPasses() map[string]string {
	known := map[string]string{
		// ZEO's test opens the blob in the server's FileStorage blob
		// directory (its forker runs the server in the test's directory,
		// BushyLayout): a zeoraid server keeps its blobs in its own data
		// directory and layout, so there is no such file. Everything the
		// client sees passes before that line.
		"GoBlobTests.checkStoreAndLoadBlob": "expected: looks for the blob file in a FileStorage server's directory layout",
	}
	if os.Geteuid() == 0 {
		// The doctest expects PermissionError when it opens a committed
		// (read-only) blob of the client's cache for writing; root may,
		// and the next example then reads the file it truncated. It
		// passes as an ordinary user (checked by hand with runuser).
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
// backend`s, measured 2026-12-07 like blobSuiteFloors: 23 of 26 in both
// encodings (knownProxyBlobNonPasses).
var proxyBlobSuiteFloors = map[string]int{"Z5/1": 23, "Z5/2": 23, "M5/1": 23, "M5/2": 23}

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
