# -*- test-case-name: tests.test_maildir -*-
"""
Tests for L{mailnet.store.maildir}.
"""

import os
import shutil
import threading
import time

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailnet.errors import BadAddress, MessageGone
from mailnet.interfaces import IMaildir, IMailStore, IMessageReceiver
from mailnet.store import maildir as maildirModule
from mailnet.store.maildir import SPOOL_IN_MEMORY, DirectorySyncer, MaildirStore, runSynchronously, uniqueName


def readFile(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class MaildirStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = self.mktemp()
        self.store = MaildirStore(self.root, runSynchronously, "mx.example.test")

    def deliver(self, body: bytes, mailboxes=("alice@example.test",), returnPath="bob@remote.test") -> str:
        receiver = self.store.receive(returnPath, list(mailboxes))
        receiver.write(body)
        return self.successResultOf(receiver.finish())

    def newFiles(self, address: str) -> list:
        directory = os.path.join(self.store.pathFor(address), "new")
        return sorted(os.listdir(directory)) if os.path.isdir(directory) else []

    def tmpFiles(self, address: str) -> list:
        directory = os.path.join(self.store.pathFor(address), "tmp")
        return sorted(os.listdir(directory)) if os.path.isdir(directory) else []

    def test_interfaces(self) -> None:
        verifyObject(IMailStore, self.store)
        verifyObject(IMaildir, self.store.maildir("alice@example.test"))
        receiver = self.store.receive("", ["alice@example.test"])
        verifyObject(IMessageReceiver, receiver)
        receiver.abort()

    def test_layout(self) -> None:
        maildir = self.store.maildir("Alice@Example.test")
        self.assertEqual(maildir.path, os.path.join(self.root, "example.test", "alice"))
        for sub in ("cur", "new", "tmp"):
            self.assertTrue(os.path.isdir(os.path.join(maildir.path, sub)))

    def test_deliveredByteForByte(self) -> None:
        """
        The stored file is the Return-Path header and then the bytes
        written, with LF line endings as mutt and Dovecot expect; the name
        carries the file size (S=) and the size on the wire (W=, CRLF).
        Nothing is left in tmp/.
        """
        body = b"Subject: hi\r\n\r\nline one\r\n.leading dot\r\n\xff binary\r\n"
        self.deliver(body)
        [name] = self.newFiles("alice@example.test")
        path = os.path.join(self.store.pathFor("alice@example.test"), "new", name)
        received = b"Return-Path: <bob@remote.test>\r\n" + body
        with open(path, "rb") as f:
            self.assertEqual(f.read(), received.replace(b"\r\n", b"\n"))
        self.assertIn(",S=%d,W=%d" % (os.path.getsize(path), len(received)), name)

    def test_crlfSplitAcrossWrites(self) -> None:
        """A CRLF split between two writes is still one line ending."""
        receiver = self.store.receive("", ["alice@example.test"])
        for piece in (b"a\r", b"\nb\r", b"\n\r", b"\n"):
            receiver.write(piece)
        self.successResultOf(receiver.finish())
        [info] = self.successResultOf(self.store.maildir("alice@example.test").snapshot())
        with self.store.maildir("alice@example.test").open(info) as f:
            self.assertEqual(f.read(), b"Return-Path: <>\na\nb\n\n")
        self.assertEqual(info.size, len(b"Return-Path: <>\r\na\r\nb\r\n\r\n"))
        self.assertEqual(os.listdir(os.path.join(self.store.pathFor("alice@example.test"), "tmp")), [])

    def test_nullSender(self) -> None:
        self.deliver(b"x\r\n", returnPath="")
        [info] = self.successResultOf(self.store.maildir("alice@example.test").snapshot())
        with self.store.maildir("alice@example.test").open(info) as f:
            self.assertTrue(f.read().startswith(b"Return-Path: <>\n"))

    def test_severalMailboxes(self) -> None:
        self.deliver(b"hello\r\n", ["alice@example.test", "bob@example.test", "carol@other.test"])
        for address in ["alice@example.test", "bob@example.test", "carol@other.test"]:
            self.assertEqual(len(self.newFiles(address)), 1)
        self.assertEqual(os.listdir(os.path.join(self.store.pathFor("alice@example.test"), "tmp")), [])

    def test_fileIntoExistingFolder(self) -> None:
        """
        A message filed into a folder (DMARC quarantine into Junk) lands in
        the Maildir++ folder of each mailbox that has it, and in the inbox
        of one that has not (a POP3-only user would never see the folder).
        """
        alice = self.store.pathFor("alice@example.test")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(alice, ".Junk", sub))
        receiver = self.store.receive("bob@remote.test", ["alice@example.test", "carol@example.test"])
        receiver.fileInto("Junk")
        receiver.write(b"Subject: suspicious\r\n\r\nhello\r\n")
        self.successResultOf(receiver.finish())
        self.assertEqual(self.newFiles("alice@example.test"), [])
        self.assertEqual(len(os.listdir(os.path.join(alice, ".Junk", "new"))), 1)
        self.assertEqual(len(self.newFiles("carol@example.test")), 1)
        self.assertFalse(os.path.exists(os.path.join(self.store.pathFor("carol@example.test"), ".Junk")))

    def test_abortPublishesNothing(self) -> None:
        receiver = self.store.receive("", ["alice@example.test"])
        receiver.write(b"partial")
        receiver.abort()
        self.assertEqual(self.newFiles("alice@example.test"), [])
        self.assertEqual(self.tmpFiles("alice@example.test"), [])

    def test_smallMessageTouchesDiskOnlyAtFinish(self) -> None:
        """
        A small message stays in memory until finish(), which does all the
        file work in the runner (a thread in the daemon), not on the reactor.
        """
        ran = []

        def run(f, *args):
            ran.append(f)
            return runSynchronously(f, *args)

        store = MaildirStore(self.root, run, "mx.example.test")
        receiver = store.receive("", ["carol@example.test"])
        receiver.write(b"x" * 1000)
        self.assertFalse(os.path.exists(store.pathFor("carol@example.test")))
        self.successResultOf(receiver.finish())
        self.assertEqual(len(ran), 1)
        self.assertEqual(len(self.newFiles("carol@example.test")), 1)

    def test_largeMessageSpillsToDisk(self) -> None:
        """Past SPOOL_IN_MEMORY octets the message goes to tmp/ as it arrives."""
        receiver = self.store.receive("", ["alice@example.test"])
        chunk = b"y" * 1000 + b"\r\n"
        for _ in range(SPOOL_IN_MEMORY // len(chunk) + 2):
            receiver.write(chunk)
        [spooled] = self.tmpFiles("alice@example.test")
        self.successResultOf(receiver.finish())
        [name] = self.newFiles("alice@example.test")
        self.assertTrue(name.startswith(spooled))
        self.assertEqual(self.tmpFiles("alice@example.test"), [])

    def manualStore(self):
        """A store whose thread work waits until the test runs it."""
        pending = []

        def run(f, *args):
            d = Deferred()
            pending.append((d, f, args))
            return d

        def runAll():
            while pending:
                d, f, args = pending.pop(0)
                try:
                    result = f(*args)
                except BaseException:
                    d.errback()
                else:
                    d.callback(result)

        return MaildirStore(self.root, run, "mx.example.test"), pending, runAll

    def test_largeMessageFileCreatedOffReactor(self) -> None:
        """
        Spilling a large message creates its file through the runner (a
        thread in the daemon); what arrives meanwhile is kept, in order.
        """
        store, pending, runAll = self.manualStore()
        receiver = store.receive("", ["alice@example.test"])
        chunk = b"z" * 1000 + b"\r\n"
        count = SPOOL_IN_MEMORY // len(chunk) + 2
        for _ in range(count):
            receiver.write(chunk)
        self.assertEqual(len(pending), 1)
        self.assertFalse(os.path.exists(store.pathFor("alice@example.test")))
        receiver.write(b"last\r\n")
        finished = receiver.finish()
        runAll()
        self.successResultOf(finished)
        [info] = self.successResultOf(self.store.maildir("alice@example.test").snapshot())
        with self.store.maildir("alice@example.test").open(info) as f:
            self.assertEqual(f.read(), b"Return-Path: <>\n" + (b"z" * 1000 + b"\n") * count + b"last\n")

    def test_abortWhileCreating(self) -> None:
        """An abort while the file is being created leaves nothing behind."""
        store, pending, runAll = self.manualStore()
        receiver = store.receive("", ["alice@example.test"])
        receiver.write(b"w" * (SPOOL_IN_MEMORY + 1))
        receiver.abort()
        runAll()
        self.assertEqual(self.tmpFiles("alice@example.test"), [])
        self.assertEqual(self.newFiles("alice@example.test"), [])

    def test_abortRemovesTmpFileWhenCloseFails(self) -> None:
        """
        Issue 11 item 12: when the disk is full, closing the aborted file
        fails (its buffer cannot be flushed); the partial file in tmp/ is
        removed all the same.
        """
        store, pending, runAll = self.manualStore()
        receiver = store.receive("", ["alice@example.test"])
        receiver.write(b"w" * (SPOOL_IN_MEMORY + 1))
        runAll()
        self.assertEqual(len(self.tmpFiles("alice@example.test")), 1)
        real = receiver._file

        class FullDisk:
            def close(self) -> None:
                real.close()
                raise OSError(28, "No space left on device")

        receiver._file = FullDisk()
        receiver.abort()
        self.assertEqual(self.tmpFiles("alice@example.test"), [])
        self.assertEqual(self.newFiles("alice@example.test"), [])

    def test_sweepTmpRemovesOldLeftovers(self) -> None:
        """
        Issue 11 item 12: files in tmp/ older than 36 hours (a crash, a
        full disk) are removed; younger ones (deliveries under way) and
        everything in new/ and cur/ stay.
        """
        self.deliver(b"kept\r\n")
        maildir = self.store.maildir("alice@example.test")
        bob = self.store.maildir("bob@other.test")
        now = time.time()
        old = os.path.join(maildir.path, "tmp", "old")
        young = os.path.join(maildir.path, "tmp", "young")
        oldBob = os.path.join(bob.path, "tmp", "old")
        for path, age in ((old, 37 * 3600), (young, 35 * 3600), (oldBob, 40 * 3600)):
            with open(path, "wb") as f:
                f.write(b"partial")
            os.utime(path, (now - age, now - age))
        [published] = self.newFiles("alice@example.test")
        stale = now - 90 * 86400
        os.utime(os.path.join(maildir.path, "new", published), (stale, stale))

        self.assertEqual(self.successResultOf(self.store.sweepTmp()), 2)
        self.assertEqual(self.tmpFiles("alice@example.test"), ["young"])
        self.assertEqual(self.tmpFiles("bob@other.test"), [])
        self.assertEqual(self.newFiles("alice@example.test"), [published])

    def test_sweepTmpRunsOffTheReactor(self) -> None:
        """The sweep is disk work: it goes through the runner (a thread)."""
        store, pending, runAll = self.manualStore()
        d = store.sweepTmp()
        self.assertNoResult(d)
        self.assertEqual(len(pending), 1)
        runAll()
        self.assertEqual(self.successResultOf(d), 0)

    def test_maildirRemovedMeanwhile(self) -> None:
        """A Maildir removed while the server runs is created again on delivery."""
        self.deliver(b"one\r\n")
        shutil.rmtree(self.store.pathFor("alice@example.test"))
        self.deliver(b"two\r\n")
        self.assertEqual(len(self.newFiles("alice@example.test")), 1)

    def test_failedSyncPublishesNothing(self) -> None:
        """If the fsync fails, nothing reaches new/ and the failure is reported."""
        receiver = self.store.receive("", ["alice@example.test"])
        receiver.write(b"data")
        self.patch(os, "fsync", self.raiseOSError)
        self.failureResultOf(receiver.finish(), OSError)
        self.assertEqual(self.newFiles("alice@example.test"), [])

    def raiseOSError(self, *args) -> None:
        raise OSError(5, "I/O error")

    def test_unsafeNames(self) -> None:
        for bad in ["../../etc@example.test", "a/b@example.test", "alice@.."]:
            self.assertRaises(BadAddress, self.store.maildir, bad)
            self.assertRaises(BadAddress, self.store.receive, "", [bad])

    def test_unsafeNamesAgain(self) -> None:
        """An unsafe address is refused every time, not remembered."""
        for _ in range(2):
            self.assertRaises(BadAddress, self.store.pathFor, "../x@example.test")

    def test_pathForRemembered(self) -> None:
        """
        pathFor answers the same for an address asked again (from its
        cache), in whatever case, and the cache is bounded.
        """
        first = self.store.pathFor("Alice@Example.Test")
        self.assertEqual(first, os.path.join(self.root, "example.test", "alice"))
        self.assertEqual(self.store.pathFor("Alice@Example.Test"), first)
        self.assertEqual(self.store.pathFor("alice@example.test"), first)
        self.patch(maildirModule, "PATH_CACHE_SIZE", 3)
        for i in range(10):
            self.assertEqual(self.store.pathFor("u%d@example.test" % (i,)), os.path.join(self.root, "example.test", "u%d" % (i,)))
            self.assertLessEqual(len(self.store._paths), 3)

    def test_snapshotOrderAndSizes(self) -> None:
        for i in range(5):
            self.deliver(b"message %d\r\n" % (i,))
        maildir = self.store.maildir("alice@example.test")
        infos = self.successResultOf(maildir.snapshot())
        self.assertEqual(len(infos), 5)
        contents = []
        for info in infos:
            with maildir.open(info) as f:
                data = f.read()
            # The size is the message's on the wire, with CRLF line endings.
            self.assertEqual(len(data.replace(b"\n", b"\r\n")), info.size)
            contents.append(data.split(b"\n")[1])
        self.assertEqual(contents, [b"message %d" % (i,) for i in range(5)])
        for info in infos:
            self.assertTrue(1 <= len(info.uid) <= 70)
            self.assertTrue(all(0x21 <= ord(c) <= 0x7E for c in info.uid))

    def test_markSeenKeepsUid(self) -> None:
        self.deliver(b"one\r\n")
        maildir = self.store.maildir("alice@example.test")
        [before] = self.successResultOf(maildir.snapshot())
        self.successResultOf(maildir.markSeen([before]))
        self.assertEqual(self.newFiles("alice@example.test"), [])
        [after] = self.successResultOf(maildir.snapshot())
        self.assertEqual(after.uid, before.uid)
        self.assertTrue(after.path.endswith(":2,S"))
        # A stale snapshot entry still opens: the message is found in cur/.
        with maildir.open(before) as f:
            self.assertEqual(f.read()[-4:], b"one\n")

    def test_remove(self) -> None:
        self.deliver(b"one\r\n")
        self.deliver(b"two\r\n")
        maildir = self.store.maildir("alice@example.test")
        first, second = self.successResultOf(maildir.snapshot())
        self.successResultOf(maildir.remove([first]))
        self.assertEqual([i.uid for i in self.successResultOf(maildir.snapshot())], [second.uid])
        self.assertRaises(MessageGone, maildir.open, first)
        # Removing again is harmless.
        self.successResultOf(maildir.remove([first]))

    def test_readWhole(self) -> None:
        """
        L{Maildir.readWhole} returns the file, wherever it went since the
        snapshot, or L{None} when it holds more than the limit.
        """
        self.deliver(b"one\r\n")
        maildir = self.store.maildir("alice@example.test")
        [before] = self.successResultOf(maildir.snapshot())
        data = readFile(before.path)
        self.assertEqual(maildir.readWhole(before, len(data)), data)
        self.assertIsNone(maildir.readWhole(before, len(data) - 1))
        # Larger than listed (another program appended): read all of it.
        with open(before.path, "ab") as f:
            f.write(b"x" * 100000)
        self.assertEqual(maildir.readWhole(before, 200000), data + b"x" * 100000)
        self.assertIsNone(maildir.readWhole(before, 100000))
        self.successResultOf(maildir.markSeen([before]))
        self.assertEqual(maildir.readWhole(before, 200000), data + b"x" * 100000)
        self.successResultOf(maildir.remove([before]))
        self.assertRaises(MessageGone, maildir.readWhole, before, 100)

    def test_readWholeShorterOrEmpty(self) -> None:
        """
        L{Maildir.readWhole} returns what the file holds when it is shorter
        than listed (another program truncated it), or empty.
        """
        self.deliver(b"one\r\n")
        maildir = self.store.maildir("alice@example.test")
        [before] = self.successResultOf(maildir.snapshot())
        with open(before.path, "wb") as f:
            f.write(b"x")
        self.assertEqual(maildir.readWhole(before, 100), b"x")
        self.assertEqual(maildir.readWhole(before, 1), b"x")
        self.assertIsNone(maildir.readWhole(before, 0))
        with open(before.path, "wb"):
            pass
        self.assertEqual(maildir.readWhole(before, 100), b"")
        self.assertEqual(maildir.readWhole(before, 0), b"")

    def test_foreignFilesTolerated(self) -> None:
        """Files written by other MDAs (Dovecot-style names) are listed too."""
        maildir = self.store.maildir("alice@example.test")
        with open(os.path.join(maildir.path, "cur", "1700000000.M1P2.host,S=3,W=4:2,S"), "wb") as f:
            f.write(b"abc")
        with open(os.path.join(maildir.path, "new", ".hidden"), "wb") as f:
            f.write(b"x")
        with open(os.path.join(maildir.path, "cur", "1700000001.M1P2.host:2,S"), "wb") as f:
            f.write(b"abcde")
        first, second = self.successResultOf(maildir.snapshot())
        self.assertEqual(first.uid, "1700000000.M1P2.host")
        self.assertEqual(first.size, 4, "the W= size")
        self.assertEqual(second.size, 5, "no W=: the file size")

    def test_uniqueNamesDiffer(self) -> None:
        names = {uniqueName("h/o:s,t") for _ in range(100)}
        self.assertEqual(len(names), 100)
        for name in names:
            self.assertNotIn("/", name)
            self.assertNotIn(":", name)
            self.assertNotIn(",", name)


class DirectorySyncerTests(SynchronousTestCase):
    """
    Group commit: deliveries finishing together share directory syncs, and
    none returns before a sync that started after its call.
    """

    def test_concurrentCallersShareOneSync(self) -> None:
        started = threading.Event()
        release = threading.Event()
        calls = []

        def slowSync(path: str) -> None:
            calls.append(path)
            if len(calls) == 1:
                started.set()
                release.wait(10)

        syncer = DirectorySyncer(slowSync)
        first = threading.Thread(target=syncer.sync, args=("/d",))
        first.start()
        self.assertTrue(started.wait(10))
        # These arrive while the first sync runs: it may not cover them.
        others = [threading.Thread(target=syncer.sync, args=("/d",)) for _ in range(5)]
        for thread in others:
            thread.start()
        for _ in range(1000):  # until all five hold their tickets
            if syncer._state["/d"][0] == 6:
                break
            time.sleep(0.01)
        release.set()
        for thread in [first] + others:
            thread.join(10)
            self.assertFalse(thread.is_alive())
        # One sync for the first caller, one shared by the five others.
        self.assertEqual(calls, ["/d", "/d"])
        self.assertEqual(syncer._state, {})

    def test_otherDirectoriesIndependent(self) -> None:
        calls = []
        syncer = DirectorySyncer(calls.append)
        syncer.sync("/a")
        syncer.sync("/b")
        syncer.sync("/a")
        self.assertEqual(calls, ["/a", "/b", "/a"])

    def test_failureReachesCaller(self) -> None:
        def failing(path: str) -> None:
            raise OSError(5, "I/O error")

        syncer = DirectorySyncer(failing)
        self.assertRaises(OSError, syncer.sync, "/d")
        # Not stuck: the next caller tries again.
        self.assertRaises(OSError, syncer.sync, "/d")
