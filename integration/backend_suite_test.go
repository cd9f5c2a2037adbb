package integration

import "testing"

// backendSuiteFloors are the pass counts of testdata/zodb_suites.py against
// `zeoraid backend` (bbolt storage, client-conflict-resolution and pack-gc
// on, a fresh data directory per server), keyed by encoding/level, like
// suiteFloors for the demo. The test fails when fewer tests pass; raise a
// floor when the backend improves, never lower it below what passes.
//
// Measured 2026-11-26 on the reference machine (2 cores, ZODB 6.3,
// ZEO 6.0.0, go test -race), the same in every run. The pack-GC tests that
// fail against the demo pass here. Not passing: the 3
// undo-with-conflict-resolution tests (expected, knownBackendNonPasses).
// History: 111/115 when first measured, because an iterator started before
// a commit returned it (IteratorStorage's testIterateWhileWriting); fixed
// in boltstore and added to the storage contract, the backend reaches 112
// of 115, the ceiling for a client-conflict-resolution server
// (docs/zeo-protocol.md section 17.3).
var backendSuiteFloors = map[string]int{
	"Z5/2": 112, // 115 - 3 (undo needs resolution)
	"Z5/1": 111, // 114 - 3
	"M5/2": 112,
	"M5/1": 111,
}

// backendSuiteLevels: as for the demo, the one long test (level 2, about
// a minute) runs in Z5 only.
var backendSuiteLevels = map[string]string{"Z5": "2", "M5": "1"}

// knownBackendNonPasses explains the tests that did not pass against the
// backend when the floors were measured; anything else is reported as NEW.
var knownBackendNonPasses = map[string]string{
	// Expected: undo with conflicts needs resolution on the server (the
	// ceiling for any client-conflict-resolution server, section 17.3;
	// real ZEO with client-conflict-resolution fails them too).
	"GoServerTests.testUndoConflictResolution":                 "expected: undo conflicts need server-side resolution",
	"GoServerTests.testUndoMultipleConflictResolution":         "expected: undo conflicts need server-side resolution",
	"GoServerTests.testUndoMultipleConflictResolutionReversed": "expected: undo conflicts need server-side resolution",
}

// TestZODBStorageSuitesAgainstBackend runs ZODB's generic storage tests and
// ZEO's ClientStorage tests (testdata/zodb_suites.py, composed like ZEO's
// testZEO.FileStorageTests) against `zeoraid backend`, one fresh backend
// with a fresh data directory per test, in both encodings. Unlike the
// demo's in-memory storage, the backend garbage-collects on pack, so the
// pack-GC tests must pass here.
//
// ZEORAID_SUITE_TESTS and ZEORAID_SUITE_LEVEL work as for
// TestZODBStorageSuitesAgainstGoServer.
func TestZODBStorageSuitesAgainstBackend(t *testing.T) {
	runZODBSuites(t, suiteRun{
		kind: "backend", floors: backendSuiteFloors, levels: backendSuiteLevels,
		known: knownBackendNonPasses, knownOnlyIn: map[string]string{}, failOnNew: true,
	})
}
