# -*- test-case-name: tests.test_queue -*-
"""
Tests for L{mailnet.store.queue}: the durable relay queue and the functions
C{mailnet-admin queue} uses.
"""

import json
import os
from typing import Any, Callable, List

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from mailnet.errors import MailnetError, UnknownQueueEntry
from mailnet.interfaces import IMessageReceiver, IRelayQueue
from mailnet.store import queue as q
from mailnet.store.maildir import runSynchronously

NOW = 1_800_000_000.0
MESSAGE = b"Subject: queued\r\nFrom: a@example.test\r\n\r\nbody\r\n"


class QueueTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.queueDir = self.mktemp()
        self.clock = Clock()
        self.clock.advance(NOW)
        self.queue = q.DiskQueue(self.queueDir, runSynchronously, self.clock, "mx.example.test")

    def enqueue(self, sender: str = "a@example.test", recipients: Any = ("x@remote.test", "y@remote.test"), message: bytes = MESSAGE) -> str:
        receiver = self.queue.receive(sender, list(recipients))
        receiver.write(message)
        return self.successResultOf(receiver.finish())

    def envelope(self, entryId: str) -> Any:
        with open(os.path.join(self.queueDir, "env", entryId + ".json")) as f:
            return json.load(f)

    def files(self, sub: str) -> List[str]:
        return sorted(os.listdir(os.path.join(self.queueDir, sub)))


class DiskQueueTests(QueueTestCase):
    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(IRelayQueue, self.queue))
        receiver = self.queue.receive("a@example.test", ["x@remote.test"])
        self.assertTrue(verifyObject(IMessageReceiver, receiver))
        receiver.abort()

    def test_finishWritesMessageAndEnvelope(self) -> None:
        """
        The message is stored byte for byte; the envelope has the sender,
        each recipient pending, the creation time and the first try (now).
        """
        entryId = self.enqueue(recipients=["x@remote.test", "y@remote.test", "x@remote.test"])
        with open(os.path.join(self.queueDir, "msg", entryId), "rb") as f:
            self.assertEqual(f.read(), MESSAGE)
        envelope = self.envelope(entryId)
        self.assertEqual(envelope["id"], entryId)
        self.assertEqual(envelope["sender"], "a@example.test")
        self.assertEqual(envelope["created"], NOW)
        self.assertEqual(envelope["next_try"], NOW)
        self.assertEqual(envelope["attempts"], 0)
        self.assertEqual(
            envelope["recipients"],
            [
                {
                    "address": a,
                    "status": "pending",
                    "attempts": 0,
                    "last_error": None,
                    "notified": False,
                    "dsn_status": None,
                    "remote_mta": None,
                }
                for a in ("x@remote.test", "y@remote.test")
            ],
        )
        self.assertFalse(envelope["eightbit"])
        self.assertEqual(self.files("tmp"), [])

    def test_eightBit(self) -> None:
        entryId = self.enqueue(message=b"Subject: caf\xc3\xa9\r\n\r\n")
        self.assertTrue(self.envelope(entryId)["eightbit"])

    def test_nothingVisibleBeforeFinish(self) -> None:
        """
        Until L{finish}, the message is only in C{tmp/}; L{abort} removes it.
        """
        receiver = self.queue.receive("a@example.test", ["x@remote.test"])
        receiver.write(MESSAGE)
        self.assertEqual(self.files("msg"), [])
        self.assertEqual(self.files("env"), [])
        self.assertEqual(len(self.files("tmp")), 1)
        receiver.abort()
        self.assertEqual(self.files("tmp"), [])
        self.assertEqual(q.listEntries(self.queueDir), [])

    def test_messageBeforeEnvelopeFsynced(self) -> None:
        """
        The message file is fsync'd and renamed into C{msg/} before the
        envelope is written; each directory is fsync'd after its rename.
        """
        events: List[Any] = []
        realRename, realFsync = os.rename, os.fsync
        self.patch(os, "rename", lambda a, b: (events.append(("rename", os.path.basename(os.path.dirname(b)))), realRename(a, b)))
        self.patch(os, "fsync", lambda fd: (events.append(("fsync",)), realFsync(fd)))
        self.patch(q, "fsyncDirectory", lambda p: events.append(("fsyncdir", os.path.basename(p))))
        self.enqueue()
        self.assertEqual(
            events,
            [("fsync",), ("rename", "msg"), ("fsyncdir", "msg"), ("fsync",), ("rename", "env"), ("fsyncdir", "env")],
        )

    def test_envelopeFailureUnpublishesMessage(self) -> None:
        """
        If the envelope cannot be written, the message does not stay behind
        and finish fails (the server answers 451).
        """

        def broken(*args: Any) -> None:
            raise OSError("disk full")

        self.patch(q, "_writeDurably", broken)
        receiver = self.queue.receive("a@example.test", ["x@remote.test"])
        receiver.write(MESSAGE)
        self.failureResultOf(receiver.finish(), OSError)
        self.assertEqual(self.files("msg"), [])
        self.assertEqual(self.files("env"), [])
        self.assertEqual(self.files("tmp"), [])

    def test_finishRunsThroughRunner(self) -> None:
        """
        The blocking part of L{finish} goes through C{run}, and the listener
        hears of the entry only once it is durable.
        """
        calls: List[Callable] = []
        pending: List[Deferred] = []

        def run(f: Callable, *args: Any) -> Deferred:
            calls.append(f)
            d: Deferred = Deferred()
            pending.append(d)
            d.addCallback(lambda _: f(*args))
            return d

        queue = q.DiskQueue(self.queueDir, run, self.clock, "mx.example.test")
        heard: List[q.QueueEntry] = []
        queue.listener = heard.append
        receiver = queue.receive("a@example.test", ["x@remote.test"])
        receiver.write(MESSAGE)
        d = receiver.finish()
        self.assertEqual((len(calls), heard, self.files("msg")), (1, [], []))
        pending[0].callback(None)
        entryId = self.successResultOf(d)
        self.assertEqual([e.id for e in heard], [entryId])

    def test_finishFailureReported(self) -> None:
        queue = q.DiskQueue(self.queueDir, lambda f, *a: fail(OSError("no")), self.clock, "h")
        receiver = queue.receive("a@example.test", ["x@remote.test"])
        self.failureResultOf(receiver.finish(), OSError)

    def test_updateAndLoad(self) -> None:
        """
        L{update} records per-recipient state durably; a new queue on the
        same directory reads it back.
        """
        entryId = self.enqueue()
        [entry] = self.successResultOf(self.queue.load())
        entry.recipients[0].status = q.DELIVERED
        entry.recipients[0].attempts = 1
        entry.recipients[1].last_error = "451 4.3.0 later"
        entry.attempts = 1
        entry.next_try = NOW + 60
        self.successResultOf(self.queue.update(entry))
        again = q.DiskQueue(self.queueDir, runSynchronously, self.clock, "h")
        [loaded] = self.successResultOf(again.load())
        self.assertEqual(loaded, entry)
        self.assertEqual([e["recipients"] for e in q.listEntries(self.queueDir)], [["y@remote.test"]])
        self.assertEqual(loaded.id, entryId)

    def test_updateAfterDelete(self) -> None:
        """
        Updating an entry that an administrator deleted fails with
        L{q.EntryGone} and does not bring it back.
        """
        entryId = self.enqueue()
        [entry] = self.successResultOf(self.queue.load())
        q.deleteEntry(self.queueDir, entryId)
        self.failureResultOf(self.queue.update(entry), q.EntryGone)
        self.assertEqual(self.files("env"), [])

    def test_updateDuringDelete(self) -> None:
        """
        An update that lands while C{queue delete} is half done (envelope
        checked before it went, message already gone) removes the envelope
        it wrote again and fails with L{q.EntryGone}.
        """
        entryId = self.enqueue()
        [entry] = self.successResultOf(self.queue.load())
        os.unlink(os.path.join(self.queueDir, "msg", entryId))
        self.failureResultOf(self.queue.update(entry), q.EntryGone)
        self.assertEqual(self.files("env"), [])

    def test_loadCollectsDebris(self) -> None:
        """
        At start, files left in C{tmp/}, messages without envelopes and
        envelopes without messages (written by hand: the queue never makes
        them) are removed.
        """
        keep = self.enqueue()
        orphanMessage = self.enqueue()
        os.unlink(os.path.join(self.queueDir, "env", orphanMessage + ".json"))
        orphanEnvelope = self.enqueue()
        os.unlink(os.path.join(self.queueDir, "msg", orphanEnvelope))
        with open(os.path.join(self.queueDir, "tmp", "half"), "wb") as f:
            f.write(b"partial")
        entries = self.successResultOf(self.queue.load())
        self.assertEqual([e.id for e in entries], [keep])
        self.assertEqual(self.files("msg"), [keep])
        self.assertEqual(self.files("env"), [keep + ".json"])
        self.assertEqual(self.files("tmp"), [])
        self.flushLoggedErrors()

    def test_unreadableEnvelopeSkipped(self) -> None:
        keep = self.enqueue()
        with open(os.path.join(self.queueDir, "env", "BAD.json"), "w") as f:
            f.write("{not json")
        self.assertEqual([e["id"] for e in q.listEntries(self.queueDir)], [keep])

    def test_existsNeedsBothFiles(self) -> None:
        entryId = self.enqueue()
        self.assertTrue(self.successResultOf(self.queue.exists(entryId)))
        os.unlink(os.path.join(self.queueDir, "msg", entryId))
        self.assertFalse(self.successResultOf(self.queue.exists(entryId)))

    def test_remove(self) -> None:
        entryId = self.enqueue()
        self.successResultOf(self.queue.remove(entryId))
        self.assertEqual((self.files("msg"), self.files("env")), ([], []))
        self.assertFalse(self.successResultOf(self.queue.exists(entryId)))

    def test_readHeaders(self) -> None:
        entryId = self.enqueue()
        self.assertEqual(self.successResultOf(self.queue.readHeaders(entryId)), b"Subject: queued\r\nFrom: a@example.test\r\n")
        self.assertEqual(self.successResultOf(self.queue.readHeaders("GONE")), b"")

    def test_openMessage(self) -> None:
        entryId = self.enqueue()
        f = self.successResultOf(self.queue.openMessage(entryId))
        with f:
            self.assertEqual(f.read(), MESSAGE)
        self.failureResultOf(self.queue.openMessage("GONE"), q.EntryGone)


class AdminFunctionTests(QueueTestCase):
    """
    The functions behind C{mailnet-admin queue list|flush|delete}.
    """

    def test_listEntries(self) -> None:
        first = self.enqueue("a@example.test", ["x@remote.test"])
        self.clock.advance(10)
        second = self.enqueue("", ["y@remote.test", "z@remote.test"])
        self.assertEqual(
            q.listEntries(self.queueDir),
            [
                {"id": first, "sender": "a@example.test", "recipients": ["x@remote.test"], "attempts": 0, "next_try": NOW, "last_error": None},
                {"id": second, "sender": "", "recipients": ["y@remote.test", "z@remote.test"], "attempts": 0, "next_try": NOW + 10, "last_error": None},
            ],
        )

    def test_listEmptyOrMissing(self) -> None:
        self.assertEqual(q.listEntries(self.queueDir), [])
        self.assertEqual(q.listEntries(self.mktemp()), [])

    def test_requestFlush(self) -> None:
        q.requestFlush(self.queueDir)
        self.assertTrue(os.path.exists(os.path.join(self.queueDir, "flush")))
        self.assertTrue(self.successResultOf(self.queue.takeFlushRequest()))
        self.assertFalse(self.successResultOf(self.queue.takeFlushRequest()))

    def test_deleteEntry(self) -> None:
        entryId = self.enqueue()
        other = self.enqueue()
        q.deleteEntry(self.queueDir, entryId)
        self.assertEqual([e["id"] for e in q.listEntries(self.queueDir)], [other])
        self.assertEqual(self.files("msg"), [other])

    def test_deleteUnknown(self) -> None:
        """
        An unknown id raises L{UnknownQueueEntry}, a L{MailnetError} whose
        text names it; ids that are not plain names never touch the disk.
        """
        error = self.assertRaises(UnknownQueueEntry, q.deleteEntry, self.queueDir, "NOSUCH")
        self.assertIsInstance(error, MailnetError)
        self.assertIn("NOSUCH", str(error))
        entryId = self.enqueue()
        for bad in ("../env/" + entryId, "", entryId + ".json", "/etc/passwd"):
            self.assertRaises(UnknownQueueEntry, q.deleteEntry, self.queueDir, bad)
        self.assertEqual(len(q.listEntries(self.queueDir)), 1)

    def test_idsSortByArrival(self) -> None:
        ids = []
        for _ in range(3):
            ids.append(self.enqueue())
            self.clock.advance(1)
        self.assertEqual(sorted(ids), ids)
        self.assertEqual([e["id"] for e in q.listEntries(self.queueDir)], ids)
