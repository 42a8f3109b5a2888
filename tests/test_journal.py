# -*- test-case-name: tests.test_journal -*-
"""
Tests for L{mailnet.store.journal}: group commit, checkpoints, recovery.
"""

import errno
import os
import shutil
import threading

from twisted.internet import reactor as globalReactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mailnet.interfaces import IDeliveryJournal
from mailnet.store import journal as journalModule
from mailnet.store.journal import (
    HEADER_SIZE,
    MIN_SIZE,
    RETRY_DELAY,
    DeliveryJournal,
    JournalRecord,
    publishRecord,
    readRecords,
    recoverJournal,
)
from mailnet.store.maildir import SPOOL_IN_MEMORY, chooseBox, ensureMaildir, MaildirStore, runSynchronously, uniqueName


class ThreadClock(Clock):
    def callFromThread(self, f, *args, **kwargs) -> None:
        f(*args, **kwargs)


class HeldRunner:
    """Thread work waits until the test runs it (or never: a crash)."""

    def __init__(self) -> None:
        self.pending: list = []

    def __call__(self, f, *args) -> Deferred:
        d: Deferred = Deferred()
        self.pending.append((d, f, args))
        return d

    def runAll(self) -> None:
        while self.pending:
            d, f, args = self.pending.pop(0)
            try:
                result = f(*args)
            except BaseException:
                d.errback()
            else:
                d.callback(result)


def crash(case, journal, records, root: str, lose: bool = True) -> None:
    acks = [journal.deliver(r) for r in records]
    journal.flush()
    for ack in acks:
        case.successResultOf(ack)
    os.close(journal._fd)  # kill -9
    journal._fd = -1
    if lose:
        for r in records:
            for box in r.boxes:
                os.unlink(os.path.join(chooseBox(os.path.join(root, box), r.folder), "new", r.name))


def record(name: str = "", box: str = "example.test/alice", data: bytes = b"Return-Path: <>\nhello\n", folder=None) -> JournalRecord:
    name = name or "%s,S=%d,W=%d" % (uniqueName("mx.example.test"), len(data), len(data) + data.count(b"\n"))
    return JournalRecord(name, (box,), folder, len(data), len(data) + data.count(b"\n"), data)


class JournalTestsMixin:
    size = 64 * 1024

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.path = os.path.join(os.path.abspath(self.mktemp()), "journal", "0.journal")
        self.clock = ThreadClock()
        self.syncs: list = []
        self.checkpoints: list = []

    def makeJournal(self, run=runSynchronously, **kwargs) -> DeliveryJournal:
        def syncAll(root, paths):
            self.checkpoints.append(list(paths))

        # Publishes go through run (which tests control) unless a test asks
        # for the reactor-thread publish of the daemon.
        defaults = dict(size=self.size, sync=self.syncs.append, syncAll=syncAll, threaded=False, inlineBoxes=0)
        defaults.update(kwargs)
        journal = DeliveryJournal(self.path, self.root, self.clock, run, **defaults)
        journal.start()
        return journal

    def onDisk(self) -> list:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            return readRecords(fd, os.fstat(fd).st_size)[0]
        finally:
            os.close(fd)

    def delivered(self, box: str = "example.test/alice") -> list:
        found = []
        for sub in ("new", "cur"):
            directory = os.path.join(self.root, box, sub)
            if os.path.isdir(directory):
                found.extend(sorted(os.listdir(directory)))
        return found


class DeliveryJournalTests(JournalTestsMixin, SynchronousTestCase):
    def test_interface(self) -> None:
        verifyObject(IDeliveryJournal, self.makeJournal())

    def test_fileIsPreWritten(self) -> None:
        """The journal file is written (zeros), never a sparse or fallocated file."""
        self.makeJournal()
        self.assertEqual(os.path.getsize(self.path), self.size)
        self.assertGreaterEqual(os.stat(self.path).st_blocks * 512, self.size)

    def test_groupCommit(self) -> None:
        """
        Records pending together are written with one sync, and only then
        acknowledged; the messages are published meanwhile.
        """
        journal = self.makeJournal()
        records = [record() for _ in range(5)]
        acks = [journal.deliver(r) for r in records]
        for ack in acks:
            self.assertNoResult(ack)
        self.assertEqual(self.syncs, [])
        journal.flush()
        self.assertEqual(len(self.syncs), 1)
        for ack in acks:
            self.assertIsNone(self.successResultOf(ack))
        self.assertEqual(sorted(self.delivered()), sorted(r.name for r in records))
        with open(os.path.join(self.root, "example.test/alice/new", records[0].name), "rb") as f:
            self.assertEqual(f.read(), records[0].data)
        self.assertEqual(os.listdir(os.path.join(self.root, "example.test/alice/tmp")), [])
        self.assertEqual(self.onDisk(), records)

    def test_checkpoint(self) -> None:
        """
        About a second after the first record, the published files are
        synced and the records retired (a new generation).
        """
        journal = self.makeJournal()
        first = record()
        journal.deliver(first)
        journal.flush()
        self.clock.advance(0.5)
        journal.deliver(record())
        journal.flush()
        self.assertEqual(self.checkpoints, [])
        self.clock.advance(0.5)
        self.assertEqual(len(self.checkpoints), 1)
        self.assertEqual(len(self.checkpoints[0]), 2)
        self.assertEqual(self.onDisk(), [])
        # The other half takes the next records.
        later = record()
        journal.deliver(later)
        journal.flush()
        self.assertEqual(self.onDisk(), [later])

    def test_checkpointWaitsForPublishing(self) -> None:
        """A record is not retired before its message is published."""
        run = HeldRunner()
        journal = self.makeJournal(run=run, checkpointRun=runSynchronously)
        r = record()
        ack = self._deliverAndFlush(journal, r)
        self.assertNoResult(ack)  # the 250 waits for the publish too
        self.clock.advance(1)
        self.assertEqual(self.checkpoints, [])
        self.assertEqual(self.onDisk(), [r])
        run.runAll()
        self.successResultOf(ack)
        self.assertEqual(len(self.checkpoints), 1)
        self.assertEqual(self.onDisk(), [])

    def test_inlinePublish(self) -> None:
        """
        A message for few mailboxes is published on the calling thread, not
        through the disk pool, before its record is synced; the 250 still
        waits for the sync.  One for more mailboxes goes through the pool.
        """
        run = HeldRunner()
        journal = self.makeJournal(run=run, inlineBoxes=2)
        ensureMaildir(os.path.join(self.root, "example.test/alice"))
        r = record()
        ack = journal.deliver(r)
        self.assertEqual(self.delivered(), [r.name])
        self.assertEqual(run.pending, [])
        self.assertNoResult(ack)
        journal.flush()
        self.successResultOf(ack)
        many = JournalRecord(r.name + "x", ("example.test/a", "example.test/b", "example.test/c"), None, r.size, r.wireSize, r.data)
        ack = journal.deliver(many)
        journal.flush()
        self.assertNoResult(ack)
        self.assertEqual([f.__name__ for _, f, _ in run.pending], ["publishRecord"])
        run.runAll()
        self.successResultOf(ack)
        self.assertEqual(self.delivered("example.test/c"), [many.name])

    def test_inlinePublishNeverSyncs(self) -> None:
        """
        A mailbox that does not exist yet (creating it syncs directories)
        is published through the disk pool, not on the calling thread.
        """
        run = HeldRunner()
        journal = self.makeJournal(run=run, inlineBoxes=2)
        r = record()
        ack = journal.deliver(r)
        journal.flush()
        self.assertEqual([f.__name__ for _, f, _ in run.pending], ["publishRecord"])
        self.assertEqual(self.delivered(), [])
        self.assertNoResult(ack)
        run.runAll()
        self.successResultOf(ack)
        self.assertEqual(self.delivered(), [r.name])

    def test_inlinePublishFailureRetried(self) -> None:
        """
        An inline publish that fails (the mailbox cannot be created) is
        acknowledged once journaled, kept, and tried again through the pool.
        """
        journal = self.makeJournal(inlineBoxes=4)
        # A file where the domain's directory should be: the Maildir cannot be made.
        with open(os.path.join(self.root, "example.test"), "w") as f:
            f.write("in the way")
        r = record()
        ack = journal.deliver(r)
        journal.flush()
        self.successResultOf(ack)
        self.assertEqual(self.onDisk(), [r])
        os.unlink(os.path.join(self.root, "example.test"))
        self.clock.advance(1)
        self.assertEqual(self.delivered(), [r.name])

    def _deliverAndFlush(self, journal, r) -> Deferred:
        d = journal.deliver(r)
        journal.flush()
        return d

    def test_publishFailureKeepsGeneration(self) -> None:
        """
        A publish that fails (ENOSPC) is tried again, and its record stays
        in the journal until it succeeds.
        """
        failures = [OSError(errno.ENOSPC, "No space left on device")] * 2

        def run(f, *args):
            if f is publishRecord and failures:
                error = failures.pop()
                return runSynchronously(lambda: (_ for _ in ()).throw(error))
            return runSynchronously(f, *args)

        journal = self.makeJournal(run=run)
        r = record()
        self.successResultOf(self._deliverAndFlush(journal, r))
        self.assertEqual(self.delivered(), [])
        self.clock.advance(1)  # the checkpoint is due; the first retry fails
        self.assertEqual(self.delivered(), [])
        self.assertEqual(self.checkpoints, [])
        self.assertEqual(self.onDisk(), [r])
        self.clock.advance(2 * RETRY_DELAY)  # the pause doubles
        self.assertEqual(self.delivered(), [r.name])
        self.assertEqual(self.onDisk(), [])

    def test_publishRetriesBackOff(self) -> None:
        """A publish that keeps failing is tried again less and less often, up to RETRY_MAX."""
        tries = []

        def run(f, *args):
            if f is publishRecord:
                tries.append(self.clock.seconds())
                return runSynchronously(lambda: (_ for _ in ()).throw(OSError(errno.EACCES, "Permission denied")))
            return runSynchronously(f, *args)

        journal = self.makeJournal(run=run)
        journal.deliver(record())
        journal.flush()
        for _ in range(600):
            self.clock.advance(0.5)
        pauses = [b - a for a, b in zip(tries, tries[1:])]
        self.assertEqual(pauses[:4], [1.0, 2.0, 4.0, 8.0])
        self.assertEqual(max(pauses), journalModule.RETRY_MAX)
        self.assertEqual(len(self.onDisk()), 1)

    def test_writeFailure(self) -> None:
        """
        A failed journal write fails the deliveries (451), and the journal
        takes nothing more: the caller syncs each message itself.
        """

        def sync(fd):
            raise OSError(errno.EIO, "Input/output error")

        journal = self.makeJournal(sync=sync)
        ack = journal.deliver(record())
        journal.flush()
        self.failureResultOf(ack, OSError)
        self.assertIsNone(journal.deliver(record()))

    def test_writeFailureUnpublishes(self) -> None:
        """
        A message whose record could not be written gets no 250: its
        published copy is removed, or the client's retry would make two.
        """

        def sync(fd):
            raise OSError(errno.EIO, "Input/output error")

        journal = self.makeJournal(sync=sync)
        ack = journal.deliver(record())
        self.assertEqual(len(self.delivered()), 1)
        journal.flush()
        self.failureResultOf(ack, OSError)
        self.assertEqual(self.delivered(), [])

    def test_manyRecordsInOneWrite(self) -> None:
        """A batch of more records than one pwritev takes (IOV_MAX) is written whole."""
        journal = self.makeJournal(size=1024 * 1024)
        records = [record(data=b"%d\n" % i) for i in range(1100)]
        acks = [journal.deliver(r) for r in records]
        journal.flush()
        self.assertEqual(len(self.syncs), 1)
        for ack in acks:
            self.successResultOf(ack)
        self.assertEqual(self.onDisk(), records)

    def test_tooBigForTheJournal(self) -> None:
        """A record larger than a half is not taken."""
        journal = self.makeJournal(size=MIN_SIZE)
        self.assertIsNone(journal.deliver(record(data=b"x" * (MIN_SIZE // 2))))

    def test_full(self) -> None:
        """
        When the active half is full and the other one still holds
        unpublished records, the journal takes nothing until a checkpoint
        frees it.
        """
        run = HeldRunner()
        journal = self.makeJournal(run=run, checkpointRun=runSynchronously, size=MIN_SIZE)
        data = b"y" * 1500
        taken = []
        while True:
            d = journal.deliver(record(data=data))
            if d is None:
                break
            taken.append(d)
            journal.flush()
            self.assertLess(len(taken), 20)
        self.assertGreater(len(taken), 2)
        run.runAll()
        self.assertIsNotNone(journal.deliver(record(data=data)))

    def test_unusable(self) -> None:
        """A journal that cannot be opened is logged once and takes nothing."""
        blocker = os.path.dirname(os.path.dirname(self.path))
        os.makedirs(os.path.dirname(blocker), exist_ok=True)
        with open(blocker, "w"):
            pass
        journal = self.makeJournal()
        self.assertFalse(journal.available)
        self.assertIsNone(journal.deliver(record()))

    def test_stop(self) -> None:
        """Stopping syncs what was published and retires the records."""
        journal = self.makeJournal()
        self.successResultOf(self._deliverAndFlush(journal, record()))
        self.successResultOf(journal.stop())
        self.assertEqual(len(self.checkpoints), 1)
        self.assertEqual(self.onDisk(), [])
        self.assertIsNone(journal.deliver(record()))

    def test_stopKeepsUnpublished(self) -> None:
        """What could not be published at stop stays for the next start."""

        def run(f, *args):
            if f is publishRecord:
                return runSynchronously(lambda: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
            return runSynchronously(f, *args)

        journal = self.makeJournal(run=run)
        r = record()
        self.successResultOf(self._deliverAndFlush(journal, r))
        self.successResultOf(journal.stop())
        self.assertEqual(self.onDisk(), [r])
        self.assertEqual(recoverJournal(self.path, self.root), (1, 0))
        self.assertEqual(self.delivered(), [r.name])


class RecoveryTests(JournalTestsMixin, SynchronousTestCase):
    def crashAfterAck(self, records, lose: bool = True) -> None:
        """
        Journal C{records} and acknowledge them; then a power loss before
        the checkpoint: the process is gone and (C{lose}) the unsynced
        Maildir files with it.
        """
        crash(self, self.makeJournal(), records, self.root, lose)

    def test_replay(self) -> None:
        """Acknowledged, unpublished messages are delivered at recovery, once."""
        records = [record(), record(box="example.test/bob"), record()]
        self.crashAfterAck(records)
        self.assertEqual(recoverJournal(self.path, self.root), (3, 0))
        self.assertEqual(sorted(self.delivered()), sorted([records[0].name, records[2].name]))
        self.assertEqual(self.delivered("example.test/bob"), [records[1].name])
        self.assertEqual(self.onDisk(), [])
        self.assertEqual(recoverJournal(self.path, self.root), (0, 0))

    def test_replayIdempotent(self) -> None:
        """
        A message already published, even read and flagged since (in cur/),
        is not delivered a second time.
        """
        r = record()
        self.crashAfterAck([r], lose=False)
        box = os.path.join(self.root, "example.test/alice")
        os.rename(os.path.join(box, "new", r.name), os.path.join(box, "cur", r.name + ":2,FS"))
        self.assertEqual(recoverJournal(self.path, self.root), (0, 1))
        self.assertEqual(self.delivered(), [r.name + ":2,FS"])

    def test_replayPartial(self) -> None:
        """A message published in one of its two mailboxes reaches the other one."""
        data = b"Return-Path: <>\nboth\n"
        r = JournalRecord("%s,S=%d,W=%d" % (uniqueName("h"), len(data), len(data) + 2), ("example.test/alice", "example.test/bob"), None, len(data), len(data) + 2, data)
        self.crashAfterAck([r])
        publishRecord(self.root, JournalRecord(r.name, ("example.test/alice",), None, r.size, r.wireSize, data), durable=False)
        self.assertEqual(self.delivered(), [r.name])
        self.assertEqual(recoverJournal(self.path, self.root), (1, 0))
        self.assertEqual(self.delivered(), [r.name])
        self.assertEqual(self.delivered("example.test/bob"), [r.name])

    def test_folderChoice(self) -> None:
        """The folder chosen at delivery (Junk) is kept by the replay."""
        box = os.path.join(self.root, "example.test/alice")
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(box, ".Junk", sub))
        r = record(folder=".Junk")
        self.crashAfterAck([r])
        recoverJournal(self.path, self.root)
        self.assertEqual(os.listdir(os.path.join(box, ".Junk", "new")), [r.name])
        self.assertEqual(os.listdir(os.path.join(box, "new")), [])

    def test_tornRecord(self) -> None:
        """Replay stops at the first damaged record (a torn, unacknowledged write)."""
        records = [record(), record(), record()]
        self.crashAfterAck(records)
        first = len(records[0].encode(1))
        with open(self.path, "r+b") as f:
            f.seek(HEADER_SIZE + first + 30)
            f.write(b"\xff")
        self.assertEqual(recoverJournal(self.path, self.root), (1, 0))
        self.assertEqual(self.delivered(), [records[0].name])

    def test_garbage(self) -> None:
        """Random bytes after the header are no record."""
        self.crashAfterAck([])
        with open(self.path, "r+b") as f:
            f.seek(HEADER_SIZE)
            f.write(os.urandom(2000))
        self.assertEqual(recoverJournal(self.path, self.root), (0, 0))

    def test_oldGenerationIgnored(self) -> None:
        """Records retired by a checkpoint are not replayed."""
        journal = self.makeJournal()
        r = record()
        self.successResultOf(self._deliver(journal, r))
        self.clock.advance(1)
        shutil.rmtree(os.path.join(self.root, "example.test"))  # a client removed it
        os.close(journal._fd)
        self.assertEqual(recoverJournal(self.path, self.root), (0, 0))
        self.assertEqual(self.delivered(), [])

    def _deliver(self, journal, r) -> Deferred:
        d = journal.deliver(r)
        journal.flush()
        return d

    def test_startRecovers(self) -> None:
        """Starting a journal delivers what its file held first."""
        r = record()
        self.crashAfterAck([r])
        journal = DeliveryJournal(self.path, self.root, self.clock, runSynchronously, size=self.size, threaded=False)
        self.assertEqual(journal.start(), (1, 0))
        self.assertEqual(self.delivered(), [r.name])
        self.assertTrue(journal.available)

    def test_journalState(self) -> None:
        """mailnet-admin check counts the records no checkpoint has retired."""
        dataDir = os.path.dirname(os.path.dirname(self.path))
        self.crashAfterAck([record(), record()])
        self.assertEqual(journalModule.journalState(dataDir), [(self.path, 2)])
        recoverJournal(self.path, self.root)
        self.assertEqual(journalModule.journalState(dataDir), [(self.path, 0)])

    def test_adminCheck(self) -> None:
        """The check's line for the journal."""
        import io

        from mailnet.cli.admin import Report, _checkJournal
        from mailnet.config import loadConfig

        dataDir = os.path.dirname(os.path.dirname(self.path))
        self.crashAfterAck([record()])
        out = io.StringIO()
        _checkJournal(loadConfig(None, {"server.data_dir": dataDir}), Report(out))
        self.assertEqual(out.getvalue(), "  ok: delivery journal: 1 file(s), 1 message(s) not yet checkpointed (replayed at start after a crash)\n")

    def test_unsafeRecord(self) -> None:
        """A record naming a path outside the mail root is refused."""
        for bad in (JournalRecord("../x", ("a/b",), None, 1, 1, b"x"), JournalRecord("x", ("../../etc",), None, 1, 1, b"x")):
            payload = bad.encode(1)[20:]
            self.assertRaises(ValueError, JournalRecord.decode, payload)


class ReceiverTests(JournalTestsMixin, SynchronousTestCase):
    def store(self, journal) -> MaildirStore:
        return MaildirStore(self.root, runSynchronously, "mx.example.test", journal=journal)

    def test_acknowledgedAfterJournalSync(self) -> None:
        """finish() fires (the 250) only once the journal write is synced."""
        journal = self.makeJournal()
        receiver = self.store(journal).receive("bob@remote.test", ["alice@example.test"])
        receiver.write(b"Subject: hi\r\n\r\nbody\r\n")
        finished = receiver.finish()
        self.assertNoResult(finished)
        self.assertEqual(self.syncs, [])
        journal.flush()
        self.assertEqual(len(self.syncs), 1)
        uid = self.successResultOf(finished)
        [name] = self.delivered()
        self.assertTrue(name.startswith(uid))
        with open(os.path.join(self.root, "example.test/alice/new", name), "rb") as f:
            self.assertEqual(f.read(), b"Return-Path: <bob@remote.test>\nSubject: hi\n\nbody\n")
        [onDisk] = self.onDisk()
        self.assertEqual(onDisk.boxes, ("example.test/alice",))
        self.assertEqual(onDisk.name, name)

    def test_folder(self) -> None:
        """fileInto() is journaled with the message."""
        journal = self.makeJournal()
        receiver = self.store(journal).receive("", ["alice@example.test"])
        receiver.fileInto("Junk")
        receiver.write(b"x\r\n")
        receiver.finish()
        journal.flush()
        [onDisk] = self.onDisk()
        self.assertEqual(onDisk.folder, ".Junk")

    def test_largeMessageSyncedDirectly(self) -> None:
        """A message spooled to tmp/ (over SPOOL_IN_MEMORY) bypasses the journal."""
        journal = self.makeJournal()
        receiver = self.store(journal).receive("", ["alice@example.test"])
        receiver.write(b"z" * (SPOOL_IN_MEMORY + 10) + b"\r\n")
        self.successResultOf(receiver.finish())
        self.assertEqual(len(self.delivered()), 1)
        self.assertEqual(self.onDisk(), [])

    def test_journalRefusesSyncedDirectly(self) -> None:
        """When the journal takes nothing (stopped, full), the message is synced as without one."""
        journal = self.makeJournal()
        self.successResultOf(journal.stop())
        receiver = self.store(journal).receive("", ["alice@example.test"])
        receiver.write(b"x\r\n")
        self.successResultOf(receiver.finish())
        self.assertEqual(len(self.delivered()), 1)


class ThreadedJournalTests(JournalTestsMixin, TestCase):
    """The writer thread, for real: concurrent deliveries share syncs."""

    def test_groupCommitInThread(self):
        synced = []
        piledUp = threading.Event()

        def slowSync(fd):
            synced.append(fd)
            # A slow disk: the first sync lasts until every record is
            # waiting; then one write and one sync take them all.
            piledUp.wait(10)
            os.fsync(fd)

        journal = DeliveryJournal(
            self.path, self.root, globalReactor, runSynchronously, size=self.size, sync=slowSync,
            syncAll=lambda root, paths: None, threaded=True,
        )
        journal.start()
        records = [record() for _ in range(30)]
        d = DeferredList([journal.deliver(r) for r in records], fireOnOneErrback=True)
        piledUp.set()

        def check(_):
            self.assertLessEqual(len(synced), 2)
            self.assertEqual(sorted(self.delivered()), sorted(r.name for r in records))
            return journal.stop()

        return d.addCallback(check)


class ModuleTests(SynchronousTestCase):
    def test_testSize(self) -> None:
        """The test suite runs with small journal files (tests/__init__.py)."""
        self.assertLessEqual(journalModule.DEFAULT_SIZE, 1024 * 1024)


class MailServiceJournalTests(SynchronousTestCase):
    """The daemon recovers every journal before it serves."""

    def setUp(self) -> None:
        from mailnet.config import LISTENERS, loadConfig

        self.dataDir = os.path.abspath(self.mktemp())
        settings = {"server.data_dir": self.dataDir, "server.hostname": "mx.example.test", "server.domain": ("example.test",)}
        # No listeners: a worker would need inherited sockets.
        settings.update({"listen." + role: () for role in LISTENERS})
        self.config = loadConfig(None, settings)
        self.root = os.path.join(self.dataDir, "mail")

    def crashed(self, index: int, records) -> None:
        """Journal file C{index} holds acknowledged, unpublished C{records}."""
        journal = DeliveryJournal(journalModule.journalPath(self.dataDir, index), self.root, ThreadClock(), runSynchronously, size=64 * 1024, threaded=False)
        journal.start()
        crash(self, journal, records, self.root)

    def service(self, inherited=None):
        from mailnet.service import MailService
        from tests.test_service import ThreadedMemoryReactor

        mail = MailService(self.config, ThreadedMemoryReactor(), handleSignals=False, inherited=inherited)
        return mail

    def test_parentRecoversEveryJournal(self) -> None:
        """
        The parent delivers the records of every journal file (its own and
        any worker's, whatever the number of workers was) at start, once.
        """
        mine, workers = record(), [record(box="example.test/bob"), record()]
        self.crashed(0, [mine])
        self.crashed(3, workers)
        mail = self.service()
        calls = []
        original = journalModule.recoverJournal
        self.patch(journalModule, "recoverJournal", lambda *a: calls.append(a[0]) or original(*a))
        with capturedLogs() as events:
            mail.privilegedStartService()
            mail.startService()
        self.addCleanup(mail.stopService)
        self.assertEqual(sorted(os.path.basename(p) for p in calls), ["0.journal", "3.journal"])
        lines = sorted(formatEvent(e) for e in events if "messages replayed" in formatEvent(e))
        self.assertEqual(lines, ["journal 0: 1 messages replayed, 0 already delivered", "journal 3: 2 messages replayed, 0 already delivered"])
        alice = os.listdir(os.path.join(self.root, "example.test/alice/new"))
        self.assertEqual(sorted(alice), sorted([mine.name, workers[1].name]))
        self.assertEqual(os.listdir(os.path.join(self.root, "example.test/bob/new")), [workers[0].name])
        self.assertTrue(mail.journal.available)
        self.assertIs(mail.mailStore.journal, mail.journal)
        # Once: a second start finds nothing more to deliver.
        self.assertEqual(recoverJournal(journalModule.journalPath(self.dataDir, 3), self.root), (0, 0))

    def test_workerRecoversItsOwn(self) -> None:
        """A (respawned) worker recovers its own journal only."""
        from mailnet.workers import Inherited

        self.crashed(0, [record()])
        mine = record(box="example.test/bob")
        self.crashed(2, [mine])
        mail = self.service(inherited=Inherited(2, 3, (), None))
        mail.privilegedStartService()
        mail.startService()
        self.addCleanup(mail.stopService)
        self.assertEqual(os.listdir(os.path.join(self.root, "example.test/bob/new")), [mine.name])
        self.assertEqual(os.listdir(os.path.join(self.root, "example.test/alice/new")), [])
        self.assertEqual(mail.journal.path, journalModule.journalPath(self.dataDir, 2))
