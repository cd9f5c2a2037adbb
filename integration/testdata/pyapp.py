"""A small ZODB application run against a zeoraid ZEO server.

Usage: python3 pyapp.py HOST:PORT[,HOST:PORT...] EXPECTED_PROTOCOL(Z5|M5) CCR(on|off)

Several addresses (a cluster of proxies) go to ClientStorage as a list.

It uses the real ZEO.ClientStorage and ZODB.DB, runs a list of checks and
prints one JSON object on the last line of stdout:

    {"protocol": "Z5", "ccr": true, "passed": N, "failed": M,
     "checks": {"name": "ok" | "FAIL: <traceback>", ...}, "info": {...}}

It exits 0 only when every check passed.

       python3 pyapp.py --verify-restart HOST:PORT EXPECTED_PROTOCOL CCR INFO_JSON

checks, against a server restarted on the same data after a normal run,
that everything the run committed is still there (INFO_JSON is the "info"
object of that run's summary: last tid, transactions, undo log), and
that the restarted server hands out fresh oids and later tids. It prints
the same kind of summary.

Written for zeoraid's integration tests (integration/pyapp_test.go,
integration/backend_test.go); it contains no ZODB/ZEO code.
"""

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback

import transaction
import BTrees.check
from BTrees.OOBTree import OOBTree
from persistent import Persistent
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping

import ZODB
import ZODB.blob
import ZODB.POSException
import ZODB.interfaces
import ZODB.utils
from ZEO.ClientStorage import ClientStorage

DEADLINE = 15.0  # seconds to wait for asynchronous effects (invalidations)


class Thing(Persistent):
    """A custom persistent class (pickled as __main__.Thing)."""

    def __init__(self, name, size):
        self.name = name
        self.size = size
        self.tags = PersistentList()

    def grow(self, n):
        self.size += n


class App:

    def __init__(self, addr, protocol, ccr):
        self.addr = addr
        self.protocol = protocol
        self.ccr = ccr
        self.dbs = []
        self.info = {}
        self.resolved = {}  # storage name -> client-side resolutions

    # -- helpers ---------------------------------------------------------

    def open_db(self, name):
        # Every client has its own (non-shared) blob cache.
        if not getattr(self, 'blob_root', None):
            self.blob_root = tempfile.mkdtemp(prefix='pyapp-blob-caches-')
        cs = ClientStorage(self.addr, wait_timeout=30, name=name,
                           blob_dir=os.path.join(self.blob_root, name))
        # Count client-side conflict resolutions: ClientStorage calls
        # tryToResolveConflict for every conflict dict a vote returns.
        orig = cs.tryToResolveConflict
        self.resolved[name] = 0

        def counting(*args, **kw):
            self.resolved[name] += 1
            return orig(*args, **kw)

        cs.tryToResolveConflict = counting
        db = ZODB.DB(cs)
        self.dbs.append(db)
        return db

    def open(self, db):
        tm = transaction.TransactionManager()
        conn = db.open(transaction_manager=tm)
        return tm, conn

    def close_all(self):
        for db in self.dbs:
            try:
                db.close()
            except Exception:
                traceback.print_exc()
        self.dbs = []

    def fresh_root(self):
        """A root read through a brand-new ClientStorage (empty cache)."""
        db = self.open_db('fresh%d' % len(self.dbs))
        tm, conn = self.open(db)
        return db, tm, conn, conn.root()

    @staticmethod
    def text(v):
        # undoLog/history metadata: bytes from the storage; ZODB's DB
        # methods hand them out decoded (str). Accept both.
        return v.decode('utf-8') if isinstance(v, bytes) else v

    @staticmethod
    def poll(cond, what, deadline=DEADLINE):
        end = time.monotonic() + deadline
        while True:
            if cond():
                return
            if time.monotonic() > end:
                raise AssertionError('timed out after %.0fs waiting for %s'
                                     % (deadline, what))
            time.sleep(0.02)

    # -- checks ----------------------------------------------------------

    def check_protocol(self):
        db = self.open_db('A')
        self.dbA = db
        st = db.storage
        assert st.is_connected(), 'not connected'
        assert st.protocol_version == self.protocol.encode(), \
            'protocol_version %r, want %r' % (st.protocol_version,
                                               self.protocol)
        self.info['protocol_version'] = st.protocol_version.decode()
        self.info['supportsUndo'] = bool(st.supportsUndo())
        self.info['interfaces'] = [list(i) for i in
                                   st._info.get('interfaces', ())]
        assert st.supportsUndo(), 'server does not advertise undo'
        # What a FileStorage with a blob directory behind runzeo
        # advertises; every server a client may reach should advertise the
        # same (interfaces are only ever added to a ClientStorage).
        want = [['ZODB.interfaces', n] for n in (
            'IBlobStorageRestoreable', 'IBlobStorage',
            'IStorageRestoreable', 'IStorageIteration', 'IStorageUndoable',
            'IStorageCurrentRecordIteration', 'IExternalGC', 'IStorage')]
        want.append(['zope.interface', 'Interface'])
        assert self.info['interfaces'] == want, self.info['interfaces']
        assert ZODB.interfaces.IStorageIteration.providedBy(st)
        assert ZODB.interfaces.IStorageUndoable.providedBy(st)
        assert ZODB.interfaces.IStorageRestoreable.providedBy(st)

    def check_objects(self):
        tm, conn = self.open(self.dbA)
        root = conn.root()
        root['map'] = PersistentMapping({'a': 1, 'b': 'two', 'c': b'\x00\xff'})
        root['list'] = PersistentList([1, 2.5, 'three', None, (4, 5)])
        t = Thing('widget', 3)
        t.tags.extend(['x', 'y'])
        root['thing'] = t
        root['nested'] = PersistentMapping(
            {'inner': PersistentMapping({'deep': PersistentList([t])})})
        tm.get().note('objects')
        tm.commit()
        t.grow(4)
        t.tags.append('z')
        tm.commit()
        conn.close()

        db, tm2, conn2, r = self.fresh_root()
        assert dict(r['map']) == {'a': 1, 'b': 'two', 'c': b'\x00\xff'}, \
            dict(r['map'])
        assert list(r['list']) == [1, 2.5, 'three', None, (4, 5)], \
            list(r['list'])
        th = r['thing']
        assert isinstance(th, Thing), type(th)
        assert (th.name, th.size, list(th.tags)) == \
            ('widget', 7, ['x', 'y', 'z']), (th.name, th.size, list(th.tags))
        deep = r['nested']['inner']['deep'][0]
        assert deep is th, 'shared reference not preserved'
        conn2.close()

    def check_btree(self):
        tm, conn = self.open(self.dbA)
        root = conn.root()
        tree = root['tree'] = OOBTree()
        n = 3000
        for i in range(n):
            tree['k%05d' % (i * 10)] = i
        tm.commit()
        conn.close()

        db, tm2, conn2, r = self.fresh_root()
        t2 = r['tree']
        assert len(t2) == n, len(t2)
        assert t2['k00000'] == 0 and t2['k29990'] == 2999
        assert list(t2.keys())[:3] == ['k00000', 'k00010', 'k00020']
        assert sum(t2.values()) == n * (n - 1) // 2
        buckets = 0
        b = t2._firstbucket
        while b is not None:
            buckets += 1
            b = b._next
        assert buckets > 10, 'only %d buckets' % buckets
        self.info['btree_buckets'] = buckets
        conn2.close()

    def check_invalidation(self):
        dbB = self.dbB = self.open_db('B')
        tmA, connA = self.open(self.dbA)
        tmB, connB = self.open(dbB)
        mA = connA.root()['map']
        mB = connB.root()['map']
        assert mB['a'] == 1, mB['a']
        mA['a'] = 100
        tmA.commit()
        tid = mA._p_serial
        assert self.dbA.storage.lastTransaction() == tid
        # B's invalidation arrives asynchronously; B's transaction keeps
        # its snapshot until its next transaction boundary.
        self.poll(lambda: dbB.storage.lastTransaction() == tid,
                  'client B to receive the invalidation')
        assert mB['a'] == 1, 'B saw the change inside its transaction'
        tmB.begin()
        assert mB['a'] == 100, 'B did not see A\'s change: %r' % mB['a']
        assert mB._p_serial == tid
        # and the other way round
        tB = connB.root()['thing']
        tB.grow(1)
        tmB.commit()
        self.poll(lambda: self.dbA.storage.lastTransaction() == tB._p_serial,
                  'client A to receive the invalidation')
        tmA.begin()
        assert connA.root()['thing'].size == 8, connA.root()['thing'].size
        connA.close()
        connB.close()

    def check_conflict(self):
        tmA, connA = self.open(self.dbA)
        tmB, connB = self.open(self.dbB)
        mA = connA.root()['map']
        mB = connB.root()['map']
        assert mA['b'] == mB['b'] == 'two'
        mA['b'] = 'from A'
        tmA.commit()
        mB['b'] = 'from B'
        try:
            tmB.commit()
        except ZODB.POSException.ConflictError as e:
            self.info['conflict_error'] = '%s: %s' % (type(e).__name__, e)
            assert type(e) is ZODB.POSException.ConflictError, type(e)
            assert e.oid == mB._p_oid, (e.oid, mB._p_oid)
            tmB.abort()
        else:
            raise AssertionError('second commit did not raise ConflictError')
        tmB.begin()
        self.poll(lambda: (tmB.begin() or True) and mB['b'] == 'from A',
                  'B to see A\'s committed value')
        connA.close()
        connB.close()

    def _concurrent_tree_inserts(self, key, make_tree):
        """Two clients insert different keys into the same bucket."""
        tmA, connA = self.open(self.dbA)
        if make_tree:
            connA.root()[key] = OOBTree({'a': 1, 'm': 2, 'z': 3})
            tmA.commit()
            self.poll(lambda: self.dbB.storage.lastTransaction()
                      == self.dbA.storage.lastTransaction(),
                      'B to catch up')
        tmB, connB = self.open(self.dbB)
        tA = connA.root()[key]
        tB = connB.root()[key]
        # Both load the bucket before either writes.
        lo, hi = ('b', 'c') if make_tree else ('k01000a', 'k01000b')
        assert lo not in tA and hi not in tB
        before = (self.resolved['A'], self.resolved['B'])
        tA[lo] = 'A'
        tmA.commit()
        tB[hi] = 'B'
        if self.ccr:
            tmB.commit()  # must succeed: resolved by client B
            assert self.resolved['B'] > before[1], \
                'commit succeeded without client-side resolution?'
        else:
            try:
                tmB.commit()
            except ZODB.POSException.ConflictError as e:
                self.info['conflict_without_ccr_' + key] = \
                    '%s: %s' % (type(e).__name__, e)
                tmB.abort()
                assert self.resolved['B'] == before[1]
                connA.close()
                connB.close()
                return
            raise AssertionError('expected a ConflictError: the server '
                                 'cannot resolve and does not delegate')
        db, tm, conn, r = self.fresh_root()
        t = r[key]
        assert t[lo] == 'A' and t[hi] == 'B', dict(t.items())
        connA.close()
        connB.close()
        conn.close()

    def check_btree_conflict_small(self):
        self._concurrent_tree_inserts('small_tree', True)

    def check_btree_conflict_bucket(self):
        self._concurrent_tree_inserts('tree', False)

    def check_undo(self):
        tm, conn = self.open(self.dbA)
        root = conn.root()
        root['undo_me'] = PersistentMapping({'v': 1})
        tm.commit()
        root['undo_me']['v'] = 2
        tm.get().note('change to undo')
        tm.get().setUser('alice')
        tm.commit()
        changed = root['undo_me']._p_serial
        log = self.dbA.undoLog(0, 20)
        assert log, 'empty undo log'
        ent = [e for e in log if self.text(e['description']) == 'change to undo']
        assert len(ent) == 1, log[:3]
        ent = ent[0]
        assert self.text(ent['user_name']) == '/ alice', ent['user_name']
        assert log[0]['id'] == ent['id'], 'undo log not newest first'
        assert isinstance(ent['time'], float)
        self.dbA.undo(ent['id'], tm.get())
        tm.get().note('undo it')
        tm.commit()
        tm.begin()
        assert root['undo_me']['v'] == 1, root['undo_me']['v']
        assert root['undo_me']._p_serial > changed
        conn.close()
        db, tm2, conn2, r = self.fresh_root()
        assert r['undo_me']['v'] == 1, r['undo_me']['v']
        conn2.close()

    def check_blobs(self):
        """Blobs (non-shared blob cache): a 3 MB and an empty blob, a
        second revision, read back through fresh clients with empty
        caches (the old revision too), and undo."""
        cache = tempfile.mkdtemp(prefix='pyapp-blobs-', dir=self.blob_root)
        cs = ClientStorage(self.addr, wait_timeout=30, name='blobs',
                           blob_dir=os.path.join(cache, 'a'))
        assert ZODB.interfaces.IBlobStorage.providedBy(cs), \
            'the server does not advertise IBlobStorage'
        db = ZODB.DB(cs)
        self.dbs.append(db)
        tm, conn = self.open(db)
        root = conn.root()
        big = os.urandom(3 * 1024 * 1024 + 17)
        root['blob'] = ZODB.blob.Blob(big)
        root['empty'] = ZODB.blob.Blob(b'')
        tm.commit()
        root['blob']._p_activate()  # a committed blob is a ghost
        first = root['blob']._p_serial
        assert first != ZODB.utils.z64
        with root['blob'].open('w') as f:
            f.write(b'second revision')
        tm.get().note('blob edit')
        tm.commit()
        oid = root['blob']._p_oid
        conn.close()

        def fresh(name):
            c = ClientStorage(self.addr, wait_timeout=30, name=name,
                              blob_dir=os.path.join(cache, name))
            d = ZODB.DB(c)
            self.dbs.append(d)
            return d
        db2 = fresh('b')
        tm2, conn2 = self.open(db2)
        r = conn2.root()
        with r['blob'].open() as f:
            assert f.read() == b'second revision', 'current revision'
        with r['empty'].open() as f:
            assert f.read() == b'', 'empty blob'
        with open(db2.storage.loadBlob(oid, first), 'rb') as f:
            got = f.read()
        assert hashlib.sha256(got).digest() == hashlib.sha256(big).digest(), \
            'old revision: %d bytes, want %d' % (len(got), len(big))
        ent = [e for e in db2.undoLog(0, 20)
               if self.text(e['description']) == 'blob edit']
        assert len(ent) == 1, 'undo log'
        db2.undo(ent[0]['id'], tm2.get())
        tm2.commit()
        conn2.close()
        db3 = fresh('c')
        tm3, conn3 = self.open(db3)
        with conn3.root()['blob'].open() as f:
            got = f.read()
        assert got == big, 'after undo: %d bytes, want %d' % (len(got), len(big))
        conn3.close()
        self.info['blob_bytes'] = len(big)
        self.info['blob_sha256'] = hashlib.sha256(big).hexdigest()

    def check_history(self):
        tm, conn = self.open(self.dbA)
        root = conn.root()
        h = root['hist'] = PersistentMapping({'n': 0})
        tm.get().note('hist 0')
        tm.commit()
        serials = [h._p_serial]
        for i in (1, 2, 3):
            h['n'] = i
            tm.get().note('hist %d' % i)
            tm.get().setUser('bob')
            tm.get().setExtendedInfo('step', i)
            tm.commit()
            serials.append(h._p_serial)
        hist = self.dbA.history(h._p_oid, size=10)
        assert [e['tid'] for e in hist] == serials[::-1], \
            ([e['tid'] for e in hist], serials[::-1])
        assert [self.text(e['description']) for e in hist] == \
            ['hist 3', 'hist 2', 'hist 1', 'hist 0'], hist
        assert self.text(hist[0]['user_name']) == '/ bob', hist[0]
        assert hist[0].get('step') == 3, hist[0]
        assert all(isinstance(e['time'], float) and e['size'] > 0
                   for e in hist), hist
        assert len(self.dbA.history(h._p_oid, size=2)) == 2
        self.hist_oid = h._p_oid
        conn.close()

    def check_pack(self):
        st = self.dbA.storage
        assert len(self.dbA.history(self.hist_oid, size=10)) == 4
        # db.pack() packs to "now"; make sure now is past the last tid.
        last = ZODB.utils.u64(st.lastTransaction())
        self.poll(lambda: ZODB.utils.u64(
            ZODB.utils.newTid(None)) > last + (1 << 32) // 6000,
            'the clock to pass the last tid')
        self.dbA.pack()
        hist = self.dbA.history(self.hist_oid, size=10)
        self.info['history_after_pack'] = len(hist)
        assert len(hist) == 1, 'history after pack: %d entries' % len(hist)
        db, tm, conn, r = self.fresh_root()
        assert r['hist']['n'] == 3
        assert len(r['tree']) >= 3000
        assert r['undo_me']['v'] == 1
        assert r['thing'].size == 8
        conn.close()

    def check_last_transaction(self):
        tm, conn = self.open(self.dbA)
        conn.root()['last'] = 'x'
        tm.commit()
        tid = conn.root()._p_serial
        assert self.dbA.storage.lastTransaction() == tid
        assert self.dbA.lastTransaction() == tid
        self.poll(lambda: self.dbB.storage.lastTransaction() == tid,
                  'B to catch up')
        cs = ClientStorage(self.addr, wait_timeout=30)
        try:
            assert cs.lastTransaction() == tid, \
                'new client lastTransaction %r != %r' % (
                    cs.lastTransaction(), tid)
            # iteration agrees
            txns = [(t.tid, t.description, t.user, len(list(t)))
                    for t in cs.iterator()]
            tids = [t[0] for t in txns]
            assert tids == sorted(tids) and len(set(tids)) == len(tids)
            assert tids[-1] == tid, (tids[-1], tid)
            self.info['transactions'] = len(tids)
            self.info['last_tid'] = tid.hex()
            # for --verify-restart: history and undo log must survive it
            self.info['txn_log'] = [
                [t.hex(), self.text(d), self.text(u), n]
                for t, d, u, n in txns]
            self.info['undo_log'] = [
                [e['id'].hex(), self.text(e['description'])]
                for e in cs.undoLog(0, 50)]
            # record iteration reaches the root
            oid, tid0, data, nxt = cs.record_iternext()
            assert oid == ZODB.utils.z64, oid
        finally:
            cs.close()
        conn.close()

    # --------------------------------------------------------------------

    def run(self):
        return self.run_checks([
            'protocol', 'objects', 'btree', 'invalidation', 'conflict',
            'btree_conflict_small', 'btree_conflict_bucket', 'undo',
            'history', 'pack', 'blobs', 'last_transaction',
        ])

    def run_checks(self, checks):
        results = {}
        for name in checks:
            t0 = time.monotonic()
            try:
                getattr(self, 'check_' + name)()
            except Exception:
                tb = traceback.format_exc()
                results[name] = 'FAIL: ' + tb
                print('check %s FAILED:\n%s' % (name, tb), file=sys.stderr)
                if name == 'protocol':
                    break
            else:
                results[name] = 'ok'
            print('check %s: %s (%.2fs)' % (
                name, results[name][:4], time.monotonic() - t0),
                file=sys.stderr)
        self.close_all()
        if getattr(self, 'blob_root', None):
            shutil.rmtree(self.blob_root, ignore_errors=True)
        self.info['client_resolutions'] = self.resolved
        failed = sum(1 for v in results.values() if v != 'ok')
        return {
            'protocol': self.protocol, 'ccr': self.ccr,
            'passed': len(results) - failed, 'failed': failed,
            'checks': results, 'info': self.info,
        }


class RestartCheck(App):
    """What App committed, read back from a restarted server."""

    def __init__(self, addr, protocol, ccr, before):
        super().__init__(addr, protocol, ccr)
        self.before = before  # App's info

    def check_protocol(self):
        db = self.dbA = self.open_db('A')
        st = db.storage
        assert st.is_connected(), 'not connected'
        assert st.protocol_version == self.protocol.encode(), \
            'protocol_version %r, want %r' % (st.protocol_version,
                                               self.protocol)

    def check_last_transaction(self):
        st = self.dbA.storage
        got = st.lastTransaction().hex()
        self.info['last_tid'] = got
        assert got == self.before['last_tid'], \
            'lastTransaction after restart %s, before %s' % (
                got, self.before['last_tid'])
        assert self.dbA.lastTransaction().hex() == got

    def check_iteration(self):
        st = self.dbA.storage
        tids = []
        records = 0
        txn_log = []
        for txn in st.iterator():
            tids.append(txn.tid)
            n = 0
            for rec in txn:
                n += 1
                records += 1
                if rec.data is not None:
                    data = st.loadSerial(rec.oid, txn.tid)
                    assert data == rec.data, \
                        'loadSerial(%r, %r) differs from the iterator' % (
                            rec.oid, txn.tid)
            txn_log.append([txn.tid.hex(), self.text(txn.description),
                            self.text(txn.user), n])
        self.info['transactions'] = len(tids)
        self.info['records'] = records
        assert tids == sorted(tids) and len(set(tids)) == len(tids), tids
        assert len(tids) == self.before['transactions'], \
            '%d transactions after restart, %d before' % (
                len(tids), self.before['transactions'])
        assert tids[-1].hex() == self.before['last_tid']
        assert txn_log == self.before['txn_log'], \
            'transactions after restart:\n%r\nbefore:\n%r' % (
                txn_log, self.before['txn_log'])
        log = [[e['id'].hex(), self.text(e['description'])]
               for e in st.undoLog(0, 50)]
        assert log == self.before['undo_log'], \
            'undo log after restart:\n%r\nbefore:\n%r' % (
                log, self.before['undo_log'])

    def check_objects(self):
        db, tm, conn, r = self.fresh_root()
        keys = {'map', 'list', 'thing', 'nested', 'tree', 'small_tree',
                'undo_me', 'hist', 'last', 'blob', 'empty'}
        assert set(r.keys()) == keys, sorted(r.keys())
        # The blob as the undo left it, through a cache that never had it.
        with r['blob'].open() as f:
            got = f.read()
        assert hashlib.sha256(got).hexdigest() == self.before['blob_sha256'], \
            'blob after restart: %d bytes' % len(got)
        assert dict(r['map']) == {'a': 100, 'b': 'from A',
                                  'c': b'\x00\xff'}, dict(r['map'])
        assert list(r['list']) == [1, 2.5, 'three', None, (4, 5)], \
            list(r['list'])
        th = r['thing']
        assert isinstance(th, Thing), type(th)
        assert (th.name, th.size, list(th.tags)) == \
            ('widget', 8, ['x', 'y', 'z']), (th.name, th.size, list(th.tags))
        assert r['nested']['inner']['deep'][0] is th, \
            'shared reference not preserved'
        assert r['undo_me']['v'] == 1, r['undo_me']['v']
        assert r['hist']['n'] == 3, r['hist']['n']
        hist = db.history(r['hist']._p_oid, size=10)
        assert len(hist) == 1, 'history after pack and restart: %d' % len(hist)
        assert r['last'] == 'x', r['last']
        conn.close()

    def check_btree(self):
        db, tm, conn, r = self.fresh_root()
        t = r['tree']
        BTrees.check.check(t)  # internal structure
        t._check()
        n = 3000
        extra = {'k01000a': 'A'}
        if self.ccr:
            extra['k01000b'] = 'B'
        assert len(t) == n + len(extra), len(t)
        for i in range(n):
            k = 'k%05d' % (i * 10)
            assert t[k] == i, (k, t.get(k))
        for k, v in extra.items():
            assert t[k] == v, (k, t.get(k))
        assert list(t.keys()) == sorted(t.keys())
        buckets = 0
        b = t._firstbucket
        while b is not None:
            buckets += 1
            b = b._next
        assert buckets > 10, 'only %d buckets' % buckets
        self.info['btree_buckets'] = buckets
        small = r['small_tree']
        BTrees.check.check(small)
        want = {'a': 1, 'm': 2, 'z': 3, 'b': 'A'}
        if self.ccr:
            want['c'] = 'B'
        assert dict(small.items()) == want, dict(small.items())
        conn.close()

    def check_write_after_restart(self):
        st = self.dbA.storage
        # every current oid
        oids = set()
        nxt = None
        while True:
            oid, tid, data, nxt = st.record_iternext(nxt)
            oids.add(oid)
            if nxt is None:
                break
        self.info['objects'] = len(oids)
        tm, conn = self.open(self.dbA)
        root = conn.root()
        root['after_restart'] = m = PersistentMapping({'ok': True})
        root['tree']['k99999'] = 'after'
        tm.get().note('after restart')
        tm.commit()
        assert m._p_oid not in oids, 'oid %r reissued after restart' % m._p_oid
        assert m._p_oid > max(oids), (m._p_oid, max(oids))
        assert m._p_serial.hex() > self.before['last_tid'], \
            (m._p_serial.hex(), self.before['last_tid'])
        conn.close()
        db, tm2, conn2, r = self.fresh_root()
        assert r['after_restart']['ok'] is True
        assert r['tree']['k99999'] == 'after'
        BTrees.check.check(r['tree'])
        conn2.close()

    def run(self):
        return self.run_checks([
            'protocol', 'last_transaction', 'iteration', 'objects', 'btree',
            'write_after_restart'])


def parse_addr(text):
    """host:port, or several separated by commas (a cluster of proxies:
    ClientStorage gets the list)."""
    addrs = []
    for part in text.split(','):
        host, port = part.rsplit(':', 1)
        addrs.append((host, int(port)))
    return addrs[0] if len(addrs) == 1 else addrs


def main():
    if len(sys.argv) == 6 and sys.argv[1] == '--verify-restart':
        app = RestartCheck(parse_addr(sys.argv[2]), sys.argv[3], sys.argv[4] == 'on',
                           json.loads(sys.argv[5]))
    elif len(sys.argv) == 4:
        app = App(parse_addr(sys.argv[1]), sys.argv[2], sys.argv[3] == 'on')
    else:
        print(__doc__, file=sys.stderr)
        return 2
    summary = app.run()
    print(json.dumps(summary, default=repr))
    return 0 if summary['failed'] == 0 else 1


if __name__ == '__main__':
    sys.exit(main())
