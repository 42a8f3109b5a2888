# -*- test-case-name: tests.test_folders -*-
"""
Tests for L{mailnet.interfaces.IMailAccount} and L{IFolder}: one mixin run
against the memory fake (L{mailnet.testing.MemoryMailAccount}) and the
Maildir++ account (L{mailnet.store.folders}).
"""

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailnet.errors import BadFolderName, CannotDeleteFolder, FolderExists, MessageGone, NoSuchFolder
from mailnet.interfaces import IFolder, IMailAccount, IMessageReceiver
from mailnet.store import folders
from mailnet.store.folders import AccountRegistry, LineEndings, applyFlags, normalizeFlags, normalizeName
from mailnet.store.maildir import MaildirStore, runSynchronously
from mailnet.store.records import FolderInfo
from mailnet.testing import MemoryMailAccount

MESSAGE = b"From: a@example.test\r\nSubject: hi\r\n\r\nbody\r\n"


def stubParse(f):
    """Stands in for L{mailnet.mime.parseMessage}: the stored octets."""
    return ("parsed", f.read())


class AccountTestsMixin:
    """
    The behaviour every L{IMailAccount} shares.  Subclasses set
    C{self.account} in C{setUp} (with L{stubParse} as the parse function)
    and implement L{deliver}.
    """

    account: IMailAccount

    def deliver(self, message: bytes = MESSAGE) -> None:
        """Deliver a message into the inbox as SMTP would (CRLF line endings)."""
        raise NotImplementedError

    def restart(self) -> None:
        """Forget everything in memory, as a restart would (nothing for the fake)."""

    def result(self, d):
        return self.successResultOf(d)

    def open(self, name: str = "INBOX"):
        folder = self.result(self.account.openFolder(name))
        self.addCleanup(folder.close)
        return folder

    def state(self, name: str = "INBOX"):
        folder = self.result(self.account.openFolder(name))
        try:
            return self.result(folder.sync())
        finally:
            folder.close()

    def append(self, name: str, message: bytes, flags=(), internalDate=None):
        receiver = self.account.append(name, frozenset(flags), internalDate)
        receiver.write(message)
        return self.result(receiver.finish())

    def names(self):
        return [f.name for f in self.result(self.account.listFolders())]

    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(IMailAccount, self.account))
        folder = self.open()
        self.assertTrue(verifyObject(IFolder, folder))
        receiver = self.account.append("INBOX", frozenset(), None)
        self.assertTrue(verifyObject(IMessageReceiver, receiver))
        receiver.abort()

    def test_defaultFolders(self) -> None:
        """A new account has INBOX, Sent, Drafts, Trash and Junk, subscribed, with their special use."""
        listing = self.result(self.account.listFolders())
        self.assertEqual(
            listing,
            [
                FolderInfo("INBOX", None, True),
                FolderInfo("Drafts", "\\Drafts", True),
                FolderInfo("Junk", "\\Junk", True),
                FolderInfo("Sent", "\\Sent", True),
                FolderInfo("Trash", "\\Trash", True),
            ],
        )

    def test_defaultsOnlyOnce(self) -> None:
        """A deleted default folder does not come back."""
        self.result(self.account.deleteFolder("Junk"))
        self.restart()
        self.assertNotIn("Junk", self.names())

    def test_create(self) -> None:
        self.result(self.account.createFolder("Work.Projects"))
        listing = {f.name: f for f in self.result(self.account.listFolders())}
        self.assertEqual(listing["Work.Projects"], FolderInfo("Work.Projects", None, True, False, True))
        self.assertTrue(listing["Work"].hasChildren)
        self.assertEqual(self.state("Work.Projects").messages, ())

    def test_createUnicode(self) -> None:
        """Names are Unicode and survive a restart as they were."""
        self.result(self.account.createFolder("Entwürfe & Co"))
        self.restart()
        self.assertIn("Entwürfe & Co", self.names())
        self.assertEqual(self.state("Entwürfe & Co").messages, ())

    def test_createSpecialUse(self) -> None:
        self.result(self.account.createFolder("Archive", "\\Archive"))
        self.restart()
        [info] = [f for f in self.result(self.account.listFolders()) if f.name == "Archive"]
        self.assertEqual(info.specialUse, "\\Archive")

    def test_createExists(self) -> None:
        self.failureResultOf(self.account.createFolder("Sent"), FolderExists)
        self.failureResultOf(self.account.createFolder("inbox"), FolderExists)

    def test_createBadNames(self) -> None:
        for name in ["", "a..b", ".a", "a/b", "a*", "a%b", "x\x01", "a." * 20 + "a", "x" * 300]:
            self.failureResultOf(self.account.createFolder(name), BadFolderName)

    def test_tooManyFolders(self) -> None:
        """CREATE and SUBSCRIBE come from the network: an account's folders and subscriptions are bounded."""
        from mailnet import testing
        from mailnet.store import folders

        self.patch(folders, "MAX_FOLDERS", 7)
        self.patch(testing, "MAX_FOLDERS", 7)
        self.result(self.account.createFolder("A"))
        self.failureResultOf(self.account.createFolder("B.C"), BadFolderName)
        self.result(self.account.createFolder("B"))
        self.failureResultOf(self.account.createFolder("C"), BadFolderName)
        self.result(self.account.setSubscribed("A", False))
        self.result(self.account.setSubscribed("X", True))
        self.failureResultOf(self.account.setSubscribed("Y", True), BadFolderName)
        self.result(self.account.setSubscribed("X", True))

    def test_inboxAnyCase(self) -> None:
        self.deliver()
        self.assertEqual(len(self.state("inbox").messages), 1)
        self.assertEqual(self.result(self.account.openFolder("InBox")).name, "INBOX")

    def test_noSuchFolder(self) -> None:
        self.failureResultOf(self.account.openFolder("Nope"), NoSuchFolder)
        self.failureResultOf(self.account.status("Nope"), NoSuchFolder)
        self.failureResultOf(self.account.deleteFolder("Nope"), NoSuchFolder)
        self.failureResultOf(self.account.renameFolder("Nope", "Other"), NoSuchFolder)
        receiver = self.account.append("Nope", frozenset(), None)
        receiver.write(MESSAGE)
        self.failureResultOf(receiver.finish(), NoSuchFolder)

    def test_appendBadName(self) -> None:
        """APPEND to a name no folder could have fails as for a missing folder."""
        receiver = self.account.append("a..b", frozenset(), None)
        receiver.write(MESSAGE)
        self.failureResultOf(receiver.finish(), NoSuchFolder)

    def test_delete(self) -> None:
        """Deleting a folder deletes its messages; folders below it stay."""
        self.result(self.account.createFolder("A.B"))
        self.append("A", MESSAGE)
        self.result(self.account.deleteFolder("A"))
        listing = {f.name: f for f in self.result(self.account.listFolders())}
        self.assertFalse(listing["A"].selectable)
        self.assertTrue(listing["A"].hasChildren)
        self.assertTrue(listing["A.B"].selectable)
        self.failureResultOf(self.account.openFolder("A"), NoSuchFolder)

    def test_deleteUnsubscribes(self) -> None:
        self.result(self.account.deleteFolder("Junk"))
        self.assertNotIn("Junk", self.names())

    def test_deleteInbox(self) -> None:
        self.failureResultOf(self.account.deleteFolder("INBOX"), CannotDeleteFolder)

    def test_recreatedNewUIDValidity(self) -> None:
        """A folder created again after a delete has a new UIDVALIDITY."""
        self.result(self.account.createFolder("A"))
        old = self.state("A").uidValidity
        self.result(self.account.deleteFolder("A"))
        self.result(self.account.createFolder("A"))
        self.assertNotEqual(self.state("A").uidValidity, old)

    def test_rename(self) -> None:
        """Renaming moves the folder, its messages, UIDs and children."""
        self.result(self.account.createFolder("A.B"))
        self.append("A", MESSAGE)
        self.append("A.B", MESSAGE)
        before = self.state("A")
        self.result(self.account.renameFolder("A", "C"))
        names = self.names()
        self.assertIn("C", names)
        self.assertIn("C.B", names)
        self.assertNotIn("A", names)
        self.assertNotIn("A.B", names)
        self.assertTrue([f.subscribed for f in self.result(self.account.listFolders()) if f.name == "C.B"] == [True])
        after = self.state("C")
        self.assertEqual([m.uid for m in after.messages], [m.uid for m in before.messages])
        self.assertEqual(len(self.state("C.B").messages), 1)

    def test_renameExists(self) -> None:
        self.result(self.account.createFolder("A"))
        self.failureResultOf(self.account.renameFolder("A", "Sent"), FolderExists)

    def test_renameInbox(self) -> None:
        """Renaming the inbox moves its messages into a new folder and leaves it empty."""
        self.deliver()
        self.deliver()
        self.result(self.account.renameFolder("INBOX", "Old"))
        self.assertEqual(self.state("INBOX").messages, ())
        self.assertEqual(len(self.state("Old").messages), 2)
        self.assertIn("INBOX", self.names())

    def test_subscriptions(self) -> None:
        """Subscriptions survive restarts; a subscribed name need not exist."""
        self.result(self.account.setSubscribed("Sent", False))
        self.result(self.account.setSubscribed("Elsewhere", True))
        self.restart()
        listing = {f.name: f for f in self.result(self.account.listFolders())}
        self.assertFalse(listing["Sent"].subscribed)
        self.assertEqual(listing["Elsewhere"], FolderInfo("Elsewhere", None, True, False, False))

    def test_deliveredMessages(self) -> None:
        """Delivered mail gets UIDs in delivery order; sizes are wire sizes."""
        self.deliver(b"Subject: one\r\n\r\n1\r\n")
        self.deliver(b"Subject: two\r\n\r\n22\r\n")
        state = self.state()
        self.assertEqual([m.uid for m in state.messages], [1, 2])
        self.assertEqual(state.uidNext, 3)
        self.assertEqual([m.flags for m in state.messages], [frozenset(), frozenset()])
        folder = self.open()
        with self.result(folder.openMessage(2)) as f:
            stored = f.read()
        self.assertTrue(stored.endswith(b"Subject: two\n\n22\n"))
        self.assertEqual(state.messages[1].size, len(stored) + stored.count(b"\n"))
        self.assertEqual(len({m.key for m in state.messages}), 2)

    def test_syncSeesNewMail(self) -> None:
        folder = self.open()
        self.assertEqual(self.result(folder.sync()).messages, ())
        self.deliver()
        self.assertEqual(len(self.result(folder.sync()).messages), 1)

    def test_uidsNotReused(self) -> None:
        folder = self.open()
        self.deliver()
        self.deliver()
        self.result(folder.sync())
        self.result(folder.setFlags([2], {"\\Deleted"}, "+"))
        self.assertEqual(self.result(folder.expunge()), [2])
        self.restart()
        self.deliver()
        self.assertEqual([m.uid for m in self.state().messages], [1, 3])

    def test_append(self) -> None:
        """
        APPEND normalises line endings (CRLF, bare CR and bare LF each one
        LF) and keeps flags and the internal date.
        """
        uidValidity, uid = self.append("Sent", b"Subject: x\r\n\r\na\rb\nc\r\n", {"\\Seen", "$Label"}, 1700000000)
        state = self.state("Sent")
        self.assertEqual(uidValidity, state.uidValidity)
        [record] = state.messages
        self.assertEqual(record.uid, uid)
        self.assertEqual(record.flags, frozenset({"\\Seen", "$Label"}))
        self.assertEqual(record.internalDate, 1700000000)
        self.assertEqual(record.size, len(b"Subject: x\r\n\r\na\r\nb\r\nc\r\n"))
        folder = self.open("Sent")
        with self.result(folder.openMessage(uid)) as f:
            self.assertEqual(f.read(), b"Subject: x\n\na\nb\nc\n")

    def test_appendCRLFSplit(self) -> None:
        receiver = self.account.append("INBOX", frozenset(), None)
        for chunk in [b"a\r", b"\nb\r", b"\r\n", b"c\r"]:
            receiver.write(chunk)
        self.result(receiver.finish())
        folder = self.open()
        [record] = self.result(folder.sync()).messages
        with self.result(folder.openMessage(record.uid)) as f:
            self.assertEqual(f.read(), b"a\nb\n\nc\n")
        self.assertEqual(record.size, 11)

    def test_appendAborted(self) -> None:
        receiver = self.account.append("INBOX", frozenset(), None)
        receiver.write(MESSAGE)
        receiver.abort()
        self.assertEqual(self.state().messages, ())

    def test_appendSeenByOpenFolder(self) -> None:
        folder = self.open("Drafts")
        self.result(folder.sync())
        self.append("Drafts", MESSAGE)
        self.assertEqual(len(self.result(folder.sync()).messages), 1)

    def test_setFlags(self) -> None:
        self.deliver()
        self.deliver()
        folder = self.open()
        before = self.result(folder.sync())
        changed, refused = self.result(folder.setFlags([1, 2, 99], {"\\seen", "Work"}, "+"))
        self.assertEqual(refused, [])
        self.assertEqual([r.uid for r in changed], [1, 2])
        self.assertEqual(changed[0].flags, frozenset({"\\Seen", "Work"}))
        self.assertGreater(changed[0].modSeq, before.highestModSeq)
        # Adding a keyword in another case changes nothing.
        changed, _ = self.result(folder.setFlags([1], {"work"}, "+"))
        self.assertEqual(changed, [])
        changed, _ = self.result(folder.setFlags([1], {"WORK"}, "-"))
        self.assertEqual(changed[0].flags, frozenset({"\\Seen"}))
        changed, _ = self.result(folder.setFlags([2], {"\\Flagged", "\\Recent"}, ""))
        self.assertEqual(changed[0].flags, frozenset({"\\Flagged"}))
        self.restart()
        state = self.state()
        self.assertEqual([m.flags for m in state.messages], [frozenset({"\\Seen"}), frozenset({"\\Flagged"})])
        self.assertGreaterEqual(state.highestModSeq, max(m.modSeq for m in state.messages))

    def test_unchangedSince(self) -> None:
        self.deliver()
        self.deliver()
        folder = self.open()
        state = self.result(folder.sync())
        self.result(folder.setFlags([2], {"\\Seen"}, "+"))
        changed, refused = self.result(folder.setFlags([1, 2], {"\\Flagged"}, "+", unchangedSince=state.highestModSeq))
        self.assertEqual([r.uid for r in changed], [1])
        self.assertEqual(refused, [2])

    def test_expunge(self) -> None:
        for _ in range(3):
            self.deliver()
        folder = self.open()
        self.result(folder.sync())
        self.result(folder.setFlags([1, 2], {"\\Deleted"}, "+"))
        self.assertEqual(self.result(folder.expunge([2, 3])), [2])
        self.assertEqual([m.uid for m in self.result(folder.sync()).messages], [1, 3])
        self.assertEqual(self.result(folder.expunge()), [1])
        self.restart()
        self.assertEqual([m.uid for m in self.state().messages], [3])
        self.failureResultOf(self.open().openMessage(1), MessageGone)

    def test_copy(self) -> None:
        self.deliver()
        self.deliver()
        folder = self.open()
        self.result(folder.sync())
        self.result(folder.setFlags([2], {"\\Seen", "Work"}, "+"))
        self.append("Trash", MESSAGE)
        uidValidity, pairs = self.result(folder.copy([2, 1, 7], "Trash"))
        target = self.state("Trash")
        self.assertEqual(uidValidity, target.uidValidity)
        self.assertEqual(pairs, [(1, 2), (2, 3)])
        self.assertEqual(target.messages[2].flags, frozenset({"\\Seen", "Work"}))
        self.assertEqual(len(self.result(folder.sync()).messages), 2)
        self.failureResultOf(folder.copy([1], "Nope"), NoSuchFolder)

    def test_copyIntoOwnFolder(self) -> None:
        self.deliver()
        folder = self.open()
        self.result(folder.sync())
        _, pairs = self.result(folder.copy([1], "INBOX"))
        self.assertEqual(pairs, [(1, 2)])
        self.assertEqual(len(self.result(folder.sync()).messages), 2)

    def test_move(self) -> None:
        self.deliver()
        self.deliver()
        folder = self.open()
        self.result(folder.sync())
        _, pairs = self.result(folder.move([1], "Junk"))
        self.assertEqual(pairs, [(1, 1)])
        self.assertEqual([m.uid for m in self.result(folder.sync()).messages], [2])
        junk = self.open("Junk")
        with self.result(junk.openMessage(1)) as f:
            self.assertTrue(f.read().endswith(b"body\n"))
        self.restart()
        self.assertEqual([m.uid for m in self.state().messages], [2])
        self.assertEqual(len(self.state("Junk").messages), 1)

    def test_status(self) -> None:
        self.deliver(b"a\r\n")
        self.deliver(b"bb\r\n")
        folder = self.open()
        self.result(folder.sync())
        self.result(folder.setFlags([1], {"\\Seen"}, "+"))
        self.result(folder.setFlags([2], {"\\Deleted"}, "+"))
        state = self.result(folder.sync())
        status = self.result(self.account.status("INBOX"))
        self.assertEqual(status.messages, 2)
        self.assertEqual(status.unseen, 1)
        self.assertEqual(status.deleted, 1)
        self.assertEqual(status.uidNext, 3)
        self.assertEqual(status.uidValidity, state.uidValidity)
        self.assertEqual(status.size, sum(m.size for m in state.messages))
        self.assertEqual(status.highestModSeq, state.highestModSeq)

    def test_statusSeesNewMail(self) -> None:
        self.assertEqual(self.result(self.account.status("INBOX")).messages, 0)
        self.deliver()
        self.assertEqual(self.result(self.account.status("INBOX")).messages, 1)

    def test_parsed(self) -> None:
        self.deliver()
        folder = self.open()
        self.result(folder.sync())
        parsed = self.result(folder.parsed([1, 5]))
        self.assertEqual(list(parsed), [1])
        self.assertEqual(parsed[1][0], "parsed")
        self.assertTrue(parsed[1][1].endswith(b"Subject: hi\n\nbody\n"))

    def test_claimRecent(self) -> None:
        """Each message is recent for one session only."""
        self.deliver()
        folder = self.open()
        self.result(folder.sync())
        self.assertEqual(self.result(folder.claimRecent()), frozenset({1}))
        self.deliver()
        self.result(folder.sync())
        self.assertEqual(self.result(folder.claimRecent()), frozenset({2}))
        self.assertEqual(self.result(folder.claimRecent()), frozenset())

    def test_sharedFolders(self) -> None:
        """Two sessions opening one folder share the object."""
        first = self.open()
        second = self.open("inbox")
        self.assertIs(first, second)

    def test_watchOtherSession(self) -> None:
        """A session's changes reach the watchers at once."""
        self.deliver()
        folder = self.open()
        self.result(folder.sync())
        calls = []
        stop = folder.watch(lambda: calls.append(1))
        self.result(folder.setFlags([1], {"\\Seen"}, "+"))
        self.assertTrue(calls)
        del calls[:]
        self.append("INBOX", MESSAGE)
        self.assertTrue(calls)
        stop()
        del calls[:]
        self.result(folder.setFlags([1], {"\\Seen"}, "-"))
        self.assertEqual(calls, [])


class MemoryAccountTests(AccountTestsMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.account = MemoryMailAccount("alice@example.test", parse=stubParse)

    def deliver(self, message: bytes = MESSAGE) -> None:
        self.account.deliver(message)


class HelperTests(SynchronousTestCase):
    def test_normalizeName(self) -> None:
        self.assertEqual(normalizeName("inbox"), "INBOX")
        self.assertEqual(normalizeName("Inbox.Sub"), "INBOX.Sub")
        self.assertEqual(normalizeName("Inboxes"), "Inboxes")

    def test_normalizeFlags(self) -> None:
        self.assertEqual(normalizeFlags(["\\SEEN", "\\Recent", "\\Other", "a", "A", "b(c"]), frozenset({"\\Seen", "a"}))

    def test_applyFlags(self) -> None:
        self.assertEqual(applyFlags(frozenset({"\\Seen", "Work"}), frozenset({"work", "x"}), "+"), frozenset({"\\Seen", "Work", "x"}))
        self.assertEqual(applyFlags(frozenset({"\\Seen", "Work"}), frozenset({"work"}), "-"), frozenset({"\\Seen"}))
        self.assertEqual(applyFlags(frozenset({"\\Seen"}), frozenset({"y"}), ""), frozenset({"y"}))

    def test_lineEndings(self) -> None:
        lines = LineEndings()
        out = b"".join(lines.feed(c) for c in [b"a\r\n", b"b\r", b"\r", b"c\n", b"\r"]) + lines.flush()
        self.assertEqual(out, b"a\nb\n\nc\n\n")
        self.assertEqual(lines.stored, len(out))
        self.assertEqual(lines.wire, len(out) + 5)


class MaildirAccountTests(AccountTestsMixin, SynchronousTestCase):
    """The Maildir++ account, run synchronously on a temporary directory."""

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.mailStore = MaildirStore(self.root, runSynchronously, "mx.example.test")
        self.registry = None
        self.restart()

    def restart(self) -> None:
        if self.registry is not None:
            self.registry.release(self.account)
        self.registry = AccountRegistry(self.mailStore, runSynchronously, parse=stubParse, load=_noLoad)
        self.account = self.registry.open("alice@example.test")

    def tearDown(self) -> None:
        self.registry.release(self.account)

    def deliver(self, message: bytes = MESSAGE) -> None:
        receiver = self.mailStore.receive("bob@example.test", ["alice@example.test"])
        receiver.write(message)
        self.successResultOf(receiver.finish())


def _noLoad(data: bytes):
    raise ValueError("the stub parse caches nothing")


class ModSeqTests(SynchronousTestCase):
    """Both stores give the messages one STORE changes one mod-sequence."""

    def test_oneModSeqPerStore(self) -> None:
        for account in (MemoryMailAccount(parse=stubParse), self.diskAccount()):
            folder = self.successResultOf(account.openFolder("INBOX"))
            for _ in range(3):
                receiver = account.append("INBOX", frozenset(), None)
                receiver.write(MESSAGE)
                self.successResultOf(receiver.finish())
            before = self.successResultOf(folder.sync()).highestModSeq
            changed, _ = self.successResultOf(folder.setFlags([1, 2, 3], {"\\Seen"}, "+"))
            self.assertEqual({r.modSeq for r in changed}, {before + 1})
            self.assertEqual(self.successResultOf(folder.sync()).highestModSeq, before + 1)
            folder.close()

    def diskAccount(self):
        registry = AccountRegistry(MaildirStore(self.mktemp(), runSynchronously, "mx.example.test"), runSynchronously)
        account = registry.open("alice@example.test")
        self.addCleanup(registry.release, account)
        return account


class LingerTests(SynchronousTestCase):
    """
    An account whose last user is done stays open LINGER seconds (at most
    MAX_LINGERING of them), so that a client connecting again soon finds
    its folders in memory; closeIdle closes them at once (server stop).
    """

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.registry = AccountRegistry(MaildirStore(self.mktemp(), runSynchronously, "mx.example.test"), runSynchronously, clock=self.clock)

    def test_reusedWithinLinger(self) -> None:
        account = self.registry.open("alice@example.test")
        self.registry.release(account)
        self.assertEqual(self.registry.active(), ["alice@example.test"])
        self.clock.advance(folders.LINGER - 1)
        self.assertIs(self.registry.open("alice@example.test"), account)
        self.clock.advance(10 * folders.LINGER)
        self.assertEqual(self.registry.active(), ["alice@example.test"])
        self.registry.release(account)
        self.clock.advance(folders.LINGER)
        self.assertEqual(self.registry.active(), [])
        self.assertIsNot(self.registry.open("alice@example.test"), account)

    def test_bounded(self) -> None:
        self.patch(folders, "MAX_LINGERING", 1)
        for name in ("a", "b"):
            self.registry.release(self.registry.open(name + "@example.test"))
        self.assertEqual(self.registry.active(), ["a@example.test"])

    def test_closeIdle(self) -> None:
        self.registry.release(self.registry.open("a@example.test"))
        self.registry.closeIdle()
        self.assertEqual(self.registry.active(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.registry.release(self.registry.open("b@example.test"))
        self.assertEqual(self.registry.active(), [])
