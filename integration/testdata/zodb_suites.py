"""Run ZODB's and ZEO's generic storage test suites against zeoraid.

Usage: python3 zodb_suites.py ZEORAID_BINARY [substring ...]

Every test gets a fresh zeoraid server process and talks to it through the
real ZEO.ClientStorage. ZEORAID_SERVER_KIND selects the server:

  demo     (default) `zeoraid demo --listen 127.0.0.1:0`, in-memory storage;
  backend  `zeoraid backend --listen 127.0.0.1:0 --data DIR`, the bbolt
           storage, DIR a fresh temporary directory per server (under
           ZEORAID_DATA_DIR if set), removed when the server stops;
  proxy    `zeoraid proxy --listen 127.0.0.1:0 --http '' --data DIR` over
           ZEORAID_PROXY_BACKENDS (default 3) fresh `zeoraid backend`s,
           each with its own fresh data directory (as for backend); the
           proxy and its backends start and stop together.

Extra flags come from ZEORAID_SERVER_ARGS (ZEORAID_DEMO_ARGS is its older
name), e.g. "--msgpack"; for the proxy they are the proxy's flags, and its
backends get ZEORAID_BACKEND_ARGS (default: "--msgpack" if the proxy has
it, else nothing). The test
classes are composed the way ZEO's own testZEO.FileStorageTests (that is,
FullGenericTests) is, plus ZODB's HistoryStorage, PersistentStorage and,
with two servers per test, RecoveryStorage -- the same composition the
reference measurement in docs/zeo-protocol.md section 17.3 used. Only the
server start-up differs: ZEO's forker is replaced by the Go binary.

ZEORAID_SUITE_SET chooses the tests: "generic" (the default, above);
"blobs", ZEO's blob tests (testZEO.CommonBlobTests and
checkStoreAndLoadBlob) and ZODB's reusable blob storage suite with a
non-shared blob cache; "sharedblobs", the same with the client sharing the
backend's blob directory (shared_blob_dir, as testZEO's
BlobWritableCacheTests and ClientStorageSharedBlobs), backend only.

Optional arguments are substrings; only tests whose id contains one of them
run. ZEORAID_SUITE_LEVEL (default 2) works like zope.testrunner's
--at-level: tests ZODB marks as long (level 2, e.g. the 64-client
test_race_external_invalidate_vs_disconnect, about a minute) run only at
level 2; zope.testrunner's default is 1. Server logs go to ZEORAID_LOG_DIR
(default: a temporary directory).

The last line of stdout is a JSON object:
    {"totals": {"run": N, "passed": P, "failures": F, "errors": E,
                "skipped": S, ...},
     "outcomes": {test_id: "pass"|"fail"|"error"|"skip"|...},
     "details": {test_id: "<traceback, shortened>"},
     "slowest": [[test_id, seconds], ...], "seconds": T,
     "watchdog_kills": [test_id, ...], "level": L,
     "not_run_level": [test_id, ...]}

The exit status is 0 whenever the run completed; judging the counts is the
caller's business. Written for zeoraid's integration tests
(integration/zodbsuite_test.go); it contains no ZODB/ZEO code, it only
imports their test modules.
"""

import json
import logging
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from ZEO.ClientStorage import ClientStorage
from ZEO.tests import testZEO
from ZODB.tests import HistoryStorage
from ZODB.tests import PersistentStorage
from ZODB.tests import RecoveryStorage
from ZODB.tests import StorageTestBase

BINARY = None
SERVER_KIND = os.environ.get('ZEORAID_SERVER_KIND') or 'demo'
if SERVER_KIND not in ('demo', 'backend', 'proxy'):
    raise SystemExit('ZEORAID_SERVER_KIND must be demo, backend or proxy, '
                     'not %r' % SERVER_KIND)
DEMO_ARGS = shlex.split(os.environ.get('ZEORAID_SERVER_ARGS') or
                        os.environ.get('ZEORAID_DEMO_ARGS', ''))
PROXY_BACKENDS = int(os.environ.get('ZEORAID_PROXY_BACKENDS') or '3')
if 'ZEORAID_BACKEND_ARGS' in os.environ:
    BACKEND_ARGS = shlex.split(os.environ['ZEORAID_BACKEND_ARGS'])
else:
    BACKEND_ARGS = ['--msgpack'] if '--msgpack' in DEMO_ARGS else []
# Parent of the backends' data directories (removed at exit if we made it).
DATA_ROOT = os.environ.get('ZEORAID_DATA_DIR') or None
_made_data_root = False
LOG_DIR = os.path.abspath(os.environ.get('ZEORAID_LOG_DIR') or
                          tempfile.mkdtemp(prefix='zeoraid-suite-logs-'))
# A test running longer than this gets its servers killed, so that a hung
# client call (a server bug) turns into an error instead of a hang.
TEST_TIMEOUT = float(os.environ.get('ZEORAID_TEST_TIMEOUT', '180'))
LEVEL = int(os.environ.get('ZEORAID_SUITE_LEVEL', '2'))
# Which tests: "generic" (default; the storage and ClientStorage suites) or
# "blobs" (ZEO's blob tests and ZODB's reusable blob storage suite with a
# non-shared blob cache, as ZEO's test_suite composes them).
SUITE_SET = os.environ.get('ZEORAID_SUITE_SET') or 'generic'
if SUITE_SET not in ('generic', 'blobs', 'sharedblobs'):
    raise SystemExit('ZEORAID_SUITE_SET must be generic, blobs or '
                     'sharedblobs, not %r' % SUITE_SET)

ADDR_RE = re.compile(rb' on (\d+\.\d+\.\d+\.\d+):(\d+),')

_live = set()          # running server processes
_live_lock = threading.Lock()
_server_seq = [0]


def data_root():
    global DATA_ROOT, _made_data_root
    if DATA_ROOT is None:
        DATA_ROOT = tempfile.mkdtemp(prefix='zeoraid-suite-data-')
        _made_data_root = True
    os.makedirs(DATA_ROOT, exist_ok=True)
    return DATA_ROOT


def _spawn(argv, log_path, test_id, data_dir=None):
    """Start one zeoraid process with stdout piped (for its banner)."""
    log = open(log_path, 'wb')
    log.write(('# %s\n' % test_id).encode())
    log.flush()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log,
                         stdin=subprocess.DEVNULL)
    log.close()
    p.data_dir = data_dir
    p.log_path = log_path
    with _live_lock:
        _live.add(p)
    return p


def _address(p, what, deadline):
    """Read p's banner line and return the (host, port) it announces."""
    line = b''
    while not line.endswith(b'\n') or line.startswith(b'zeoraid proxy: assembling'):
        if line.endswith(b'\n'):
            line = b''  # a proxy says what it waits for before its banner
        left = deadline - time.monotonic()
        if left <= 0 or p.poll() is not None:
            raise RuntimeError('zeoraid %s did not start (got %r; log %s)'
                               % (what, line, p.log_path))
        r, _, _ = select.select([p.stdout], [], [], left)
        if r:
            ch = os.read(p.stdout.fileno(), 1)
            if not ch:
                continue
            line += ch
    m = ADDR_RE.search(line)
    if not m:
        raise RuntimeError('cannot parse zeoraid %s banner %r' % (what, line))
    return (m.group(1).decode(), int(m.group(2)))


def start_server(test_id, keep_data_in=None):
    """Start a zeoraid server; return ((host, port), stop).

    keep_data_in: for a backend, the data directory to use and keep (a
    blob doctest that opens the same storage name again expects its data,
    as with a FileStorage file of that name)."""
    with _live_lock:
        _server_seq[0] += 1
        n = _server_seq[0]
    if SERVER_KIND == 'proxy':
        return _start_proxy(test_id, n)
    log_path = os.path.join(LOG_DIR, 'server-%04d.log' % n)
    data_dir = None
    if SERVER_KIND == 'backend':
        if keep_data_in:
            os.makedirs(keep_data_in, exist_ok=True)
            argv = [BINARY, 'backend', '--listen', '127.0.0.1:0',
                    '--data', keep_data_in]
        else:
            data_dir = tempfile.mkdtemp(prefix='server-%04d-' % n,
                                        dir=data_root())
            argv = [BINARY, 'backend', '--listen', '127.0.0.1:0',
                    '--data', data_dir]
    else:
        argv = [BINARY, 'demo', '--listen', '127.0.0.1:0']
    p = _spawn(argv + DEMO_ARGS, log_path, test_id, data_dir)
    try:
        addr = _address(p, SERVER_KIND, time.monotonic() + 20)
    except Exception:
        _stop(p)
        raise

    def stop():
        _stop(p)
    # The backend's data directory (a blob test looks for the server's
    # blob files there); none for the demo's in-memory storage.
    stop.data_dirs = [keep_data_in or data_dir] if SERVER_KIND == 'backend' else []
    return addr, stop


def _start_proxy(test_id, n):
    """A proxy over PROXY_BACKENDS fresh backends (started in parallel)."""
    procs = []
    try:
        backends = []
        for i in range(1, PROXY_BACKENDS + 1):
            d = tempfile.mkdtemp(prefix='server-%04d-b%d-' % (n, i),
                                 dir=data_root())
            p = _spawn([BINARY, 'backend', '--listen', '127.0.0.1:0',
                        '--data', d] + BACKEND_ARGS,
                       os.path.join(LOG_DIR, 'server-%04d-b%d.log' % (n, i)),
                       test_id, d)
            procs.append(p)
            backends.append(('b%d' % i, p))
        deadline = time.monotonic() + 30
        argv = [BINARY, 'proxy', '--listen', '127.0.0.1:0', '--http', '']
        for name, p in backends:
            host, port = _address(p, 'backend', deadline)
            argv += ['--backend', '%s=%s:%d' % (name, host, port)]
        d = tempfile.mkdtemp(prefix='server-%04d-proxy-' % n, dir=data_root())
        p = _spawn(argv + ['--data', d] + DEMO_ARGS,
                   os.path.join(LOG_DIR, 'server-%04d-proxy.log' % n),
                   test_id, d)
        procs.append(p)
        addr = _address(p, 'proxy', time.monotonic() + 30)
    except Exception:
        _stop_all(procs)
        raise

    def stop():
        _stop_all(procs)
    stop.data_dirs = [p.data_dir for _, p in backends]
    return addr, stop


def _stop_all(procs):
    """Stop processes together: SIGTERM to all, then wait for each."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        _stop(p)


def _stop(p):
    with _live_lock:
        _live.discard(p)
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p.stdout:
        p.stdout.close()
    _remove_data(p)


def _remove_data(p):
    d = getattr(p, 'data_dir', None)
    if d and p.poll() is not None:
        p.data_dir = None
        shutil.rmtree(d, ignore_errors=True)


def kill_all_servers():
    with _live_lock:
        procs = list(_live)
    for p in procs:
        if p.poll() is None:
            p.kill()


def cleanup_data():
    """At exit: kill what is left, remove every data directory."""
    with _live_lock:
        procs = list(_live)
        _live.clear()
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        _remove_data(p)
    for d in _shared_data:
        shutil.rmtree(d, ignore_errors=True)
    if _made_data_root and DATA_ROOT:
        shutil.rmtree(DATA_ROOT, ignore_errors=True)


def new_client(addr, **kw):
    # The options ZEO's GenericTestBase.setUp uses.
    return ClientStorage(addr, '1', cache_size=20000000,
                         min_disconnect_poll=0.5, wait=1, wait_timeout=60,
                         **kw)


class GoServerTests(testZEO.FileStorageTests,
                    HistoryStorage.HistoryStorage,
                    PersistentStorage.PersistentStorage):
    """testZEO.FullGenericTests (via FileStorageTests, for its
    interface check) + History + Persistent, served by zeoraid."""

    # A zeoraid server keeps blobs, so it advertises what a FileStorage
    # opened with a blob_dir does (runzeo with blob-dir): the blob pair,
    # directly provided, first; then FileStorage's own interfaces.
    _expected_interfaces = (
        ('ZODB.interfaces', 'IBlobStorageRestoreable'),
        ('ZODB.interfaces', 'IBlobStorage'),
    ) + testZEO.FileStorageTests._expected_interfaces

    def setUp(self):
        # What GenericTestBase.setUp does, with forker.start_zeo_server
        # replaced by the Go server.
        StorageTestBase.StorageTestBase.setUp(self)
        addr, stop = start_server(self.id())
        self._servers = [stop]
        if not self.blob_cache_dir:
            self.blob_cache_dir = tempfile.mkdtemp(
                'blob_cache', dir=os.path.abspath(os.getcwd()))
        self._storage = self._wrap_client(new_client(
            addr, blob_dir=self.blob_cache_dir,
            shared_blob_dir=self.shared_blob_dir, **self._client_options()))
        self._storage.registerDB(testZEO.DummyDB())


class GoRecoveryTests(StorageTestBase.StorageTestBase,
                      RecoveryStorage.RecoveryStorage):
    """testZEO.FileStorageRecoveryTests with two zeoraid servers."""

    def _new_storage(self):
        addr, stop = start_server(self.id())
        self._servers.append(stop)
        storage = new_client(addr, blob_dir=tempfile.mkdtemp(dir='.'))
        storage.registerDB(testZEO.DummyDB())
        return storage

    def setUp(self):
        StorageTestBase.StorageTestBase.setUp(self)
        self._servers = []
        self._storage = self._new_storage()
        self._dst = self._new_storage()

    def tearDown(self):
        self._storage.close()
        self._dst.close()
        for stop in self._servers:
            stop()
        StorageTestBase.StorageTestBase.tearDown(self)

    def new_dest(self):
        return self._new_storage()


class GoBlobTests(testZEO.GenericTestBase, testZEO.CommonBlobTests):
    """ZEO's blob tests (testZEO.CommonBlobTests and
    BlobAdaptedFileStorageTests.checkStoreAndLoadBlob) through a
    non-shared blob cache, served by zeoraid."""

    checkStoreAndLoadBlob = \
        testZEO.BlobAdaptedFileStorageTests.checkStoreAndLoadBlob

    def setUp(self):
        GoServerTests.setUp(self)
        # checkStoreAndLoadBlob looks for the committed file in the
        # server's blob directory (BushyLayout): a backend's, or the first
        # backend's behind a proxy (each has every blob).
        dirs = self._servers[0].data_dirs
        if dirs:
            self.blobdir = backend_blob_dir(dirs[0])


class GoServerClientStorage(ClientStorage):
    """ZEO's ServerManagingClientStorage with a zeoraid server: the factory
    of ZODB's reusable blob storage suite (non-shared blobs)."""

    def __init__(self, name, blob_dir):
        addr, self._stop_server = start_server(
            'blob-suite:' + name,
            keep_data_in=os.path.abspath(name + '.zeoraid-data'))
        ClientStorage.__init__(self, addr, blob_dir=blob_dir)

    def close(self):
        ClientStorage.close(self)
        self._stop_server()


# The data directories the shared-blob tests keep (outside the tests' own
# directories); removed at exit.
_shared_data = []


def backend_blob_dir(data_dir):
    """The blob directory of storage '1' of a zeoraid backend."""
    return os.path.join(data_dir, '1.zeoraid.blobs')


class GoSharedBlobTests(testZEO.GenericTestBase, testZEO.CommonBlobTests):
    """ZEO's blob tests with a blob directory shared with the server (as
    testZEO.BlobWritableCacheTests): the client uses the backend's own
    blob directory."""

    shared_blob_dir = True

    def setUp(self):
        StorageTestBase.StorageTestBase.setUp(self)
        data = tempfile.mkdtemp(prefix='shared-', dir=data_root())
        _shared_data.append(data)
        addr, stop = start_server(self.id(), keep_data_in=data)
        self._servers = [stop]
        self.blob_cache_dir = self.blobdir = backend_blob_dir(data)
        self._storage = self._wrap_client(new_client(
            addr, blob_dir=self.blob_cache_dir, shared_blob_dir=True,
            **self._client_options()))
        self._storage.registerDB(testZEO.DummyDB())


class GoSharedServerClientStorage(ClientStorage):
    """ZEO's ServerManagingClientStorage(shared=True) with a zeoraid
    backend: the client's blob directory is the backend's. The suite names
    the directory (its doctests look into it and remove it): the
    backend's blob directory is a symbolic link to it. The backend's data
    directory lies outside the test's directory (whose clean-up does not
    take symbolic links), one per blob directory, kept while the test
    reopens the storage."""

    _data_dirs = {}

    def __init__(self, name, blob_dir):
        key = os.path.abspath(blob_dir)
        data = self._data_dirs.get(key)
        if data is None or not os.path.isdir(key):
            data = tempfile.mkdtemp(prefix='shared-', dir=data_root())
            _shared_data.append(data)
            self._data_dirs[key] = data
        os.makedirs(blob_dir, exist_ok=True)
        if not os.path.lexists(backend_blob_dir(data)):
            os.symlink(os.path.abspath(blob_dir), backend_blob_dir(data))
        addr, self._stop_server = start_server(
            'shared-blob-suite:' + name, keep_data_in=data)
        ClientStorage.__init__(self, addr, blob_dir=blob_dir,
                               shared_blob_dir=True)

    def close(self):
        ClientStorage.close(self)
        self._stop_server()


def shared_blob_suites():
    """The blob tests ZEO's test_suite runs with a shared blob directory."""
    import ZODB.tests.testblob
    suite = load_tests([GoSharedBlobTests])
    suite.addTest(ZODB.tests.testblob.storage_reusable_suite(
        'ClientStorageSharedBlobs', GoSharedServerClientStorage))
    return suite


def blob_suites():
    """The blob tests ZEO's test_suite runs for a non-shared blob cache."""
    import ZODB.tests.testblob
    suite = load_tests([GoBlobTests])
    suite.addTest(ZODB.tests.testblob.storage_reusable_suite(
        'ClientStorageNonSharedBlobs', GoServerClientStorage))
    return suite


def load_tests(classes):
    """Load `check*` and `test*` methods, as ZEO's test_suite does."""
    suite = unittest.TestSuite()
    for cls in classes:
        for prefix in ('check', 'test'):
            loader = unittest.TestLoader()
            loader.testMethodPrefix = prefix
            suite.addTests(loader.loadTestsFromTestCase(cls))
    return suite


def flatten(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from flatten(t)
        else:
            yield t


def test_level(test):
    # zope.testrunner's rule: a method's `level` attribute, default 1.
    return getattr(getattr(test, test._testMethodName, None), 'level', 1)


def short(tb, limit=4000):
    return tb if len(tb) <= limit else tb[:1500] + '\n...\n' + tb[-2400:]


class Result(unittest.TestResult):

    def __init__(self):
        super().__init__()
        self.outcomes = {}
        self.details = {}
        self.times = {}
        self._t0 = None
        self.watchdog_kills = []
        self._cur = None
        threading.Thread(target=self._watchdog, daemon=True).start()

    def _watchdog(self):
        while True:
            time.sleep(1)
            cur, t0 = self._cur, self._t0
            if cur is not None and t0 is not None and \
                    time.monotonic() - t0 > TEST_TIMEOUT and \
                    cur not in self.watchdog_kills:
                self.watchdog_kills.append(cur)
                print('WATCHDOG: %s exceeded %.0fs; killing its servers'
                      % (cur, TEST_TIMEOUT), file=sys.stderr, flush=True)
                kill_all_servers()

    def startTest(self, test):
        super().startTest(test)
        self._cur = test.id()
        self._t0 = time.monotonic()
        print('START %s' % test.id(), file=sys.stderr, flush=True)

    def stopTest(self, test):
        super().stopTest(test)
        dt = time.monotonic() - self._t0
        self.times[test.id()] = dt
        self._cur = None
        self.outcomes.setdefault(test.id(), 'pass')
        print('%-5s %s (%.2fs)' % (self.outcomes[test.id()].upper(),
                                   test.id(), dt),
              file=sys.stderr, flush=True)

    def _set(self, test, outcome, detail=None):
        # A test can fail and then error in tearDown; keep the first.
        tid = test.id()
        if self.outcomes.get(tid, 'pass') == 'pass':
            self.outcomes[tid] = outcome
        if detail:
            self.details[tid] = self.details.get(tid, '') + short(detail)

    def addError(self, test, err):
        super().addError(test, err)
        self._set(test, 'error', self.errors[-1][1])

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set(test, 'fail', self.failures[-1][1])

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._set(test, 'skip', reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._set(test, 'xfail')

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set(test, 'xpass')

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = 'fail' if issubclass(err[0], test.failureException) \
                else 'error'
            self._set(test, kind, self._exc_info_to_string(err, test))


def main():
    global BINARY
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    BINARY = os.path.abspath(sys.argv[1])
    os.makedirs(LOG_DIR, exist_ok=True)
    patterns = sys.argv[2:]
    logging.basicConfig(level=logging.CRITICAL)

    def on_signal(signum, frame):
        kill_all_servers()
        cleanup_data()
        sys.exit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)

    # Before any test: ZODB's test set-up points tempfile at each test's
    # own directory, which the test removes.
    data_root()
    if SUITE_SET == 'blobs':
        suite = blob_suites()
    elif SUITE_SET == 'sharedblobs':
        if SERVER_KIND != 'backend':
            raise SystemExit('ZEORAID_SUITE_SET=sharedblobs needs a backend '
                             '(a proxy shares no blob directory)')
        suite = shared_blob_suites()
    else:
        suite = load_tests([GoServerTests, GoRecoveryTests])
    tests = list(flatten(suite))
    if patterns:
        tests = [t for t in tests if any(p in t.id() for p in patterns)]
    not_run_level = [t.id() for t in tests if test_level(t) > LEVEL]
    tests = [t for t in tests if test_level(t) <= LEVEL]
    print('running %d tests; server logs in %s' % (len(tests), LOG_DIR),
          file=sys.stderr, flush=True)
    result = Result()
    t0 = time.monotonic()
    try:
        unittest.TestSuite(tests).run(result)
    finally:
        kill_all_servers()
        cleanup_data()
    seconds = time.monotonic() - t0
    counts = {}
    for o in result.outcomes.values():
        counts[o] = counts.get(o, 0) + 1
    totals = {
        'run': len(result.outcomes),
        'passed': counts.get('pass', 0),
        'failures': counts.get('fail', 0),
        'errors': counts.get('error', 0),
        'skipped': counts.get('skip', 0),
        'expected_failures': counts.get('xfail', 0),
        'unexpected_successes': counts.get('xpass', 0),
    }
    slowest = sorted(result.times.items(), key=lambda kv: -kv[1])[:10]
    out = {
        'server_kind': SERVER_KIND, 'suite_set': SUITE_SET,
        'demo_args': DEMO_ARGS, 'server_args': DEMO_ARGS, 'totals': totals,
        'outcomes': result.outcomes, 'details': result.details,
        'slowest': [[k, round(v, 2)] for k, v in slowest],
        'seconds': round(seconds, 1),
        'watchdog_kills': result.watchdog_kills,
        'level': LEVEL, 'not_run_level': not_run_level,
        'log_dir': LOG_DIR,
    }
    sys.stdout.flush()
    print(json.dumps(out, default=repr))
    return 0


if __name__ == '__main__':
    sys.exit(main())
