# -*- test-case-name: tests.test_index -*-
"""
Tests for the Maildir++ side of the folder store: L{mailnet.store.index}
(what is on disk, the SQLite index, Dovecot compatibility), the watchers
of L{mailnet.store.watch}, and the realm's L{IMailAccount} avatars.
"""

import os
import sqlite3
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mailnet.cred import MailRealm, makePortal
from mailnet.errors import MailboxInUse, NoSuchFolder
from mailnet.interfaces import IMailAccount, IMailbox
from mailnet.store import index
from mailnet.store.folders import AccountRegistry, readSubscriptions
from mailnet.store.index import INDEX_NAME, UIDLIST_IMPORTED, readUidList, wireSizeOfFile
from mailnet.store.maildir import Maildir, MaildirStore, runSynchronously
from mailnet.store.watch import InotifyWatcher, PollingWatcher, makeWatcher
from mailnet.testing import MemoryAccountStore

MESSAGE = b"From: a@example.test\r\nSubject: hi\r\n\r\nbody\r\n"
ADDRESS = "alice@example.test"


class Parsed:
    """A parse result that the index can cache."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def toBytes(self) -> bytes:
        return b"P" + self.data

    @classmethod
    def fromBytes(cls, data: bytes) -> "Parsed":
        if not data.startswith(b"P"):
            raise ValueError("not ours")
        return cls(data[1:])


class FakeWatcher:
    """Records watches; C{fire()} plays a change on disk."""

    def __init__(self) -> None:
        self.watches = {}

    def watch(self, paths, callback):
        key = object()
        self.watches[key] = (list(paths), callback)
        return lambda: self.watches.pop(key, None)

    def fire(self) -> None:
        for _, callback in list(self.watches.values()):
            callback()


class DiskTestsMixin:
    def setUpStore(self) -> None:
        self.root = self.mktemp()
        self.mailStore = MaildirStore(self.root, runSynchronously, "mx.example.test")
        self.path = self.mailStore.pathFor(ADDRESS)
        self.parses = []
        self.watcher = FakeWatcher()
        self.registries = []
        self.registry, self.account = self.process()

    def parse(self, f) -> Parsed:
        self.parses.append(1)
        return Parsed(f.read())

    def process(self):
        """A registry and account as another process (or the next start) would have them."""
        registry = AccountRegistry(self.mailStore, runSynchronously, self.watcher, self.parse, Parsed.fromBytes)
        account = registry.open(ADDRESS)
        self.addCleanup(registry.release, account)
        return registry, account

    def restart(self) -> None:
        self.registry.release(self.account)
        self.registry, self.account = self.process()

    def result(self, d):
        return self.successResultOf(d)

    def deliver(self, message: bytes = MESSAGE) -> str:
        receiver = self.mailStore.receive("bob@example.test", [ADDRESS])
        receiver.write(message)
        return self.result(receiver.finish())

    def open(self, name="INBOX", account=None):
        folder = self.result((account or self.account).openFolder(name))
        self.addCleanup(folder.close)
        return folder

    def files(self, sub: str, folder: str = "") -> list:
        return sorted(os.listdir(os.path.join(self.path, folder, sub)))


class IndexTests(DiskTestsMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.setUpStore()

    def test_layout(self) -> None:
        """Maildir++ as Dovecot: dot directories in modified UTF-7, a maildirfolder file, subscriptions."""
        self.result(self.account.createFolder("Entwürfe.Alt"))
        for name in (".Sent", ".Drafts", ".Trash", ".Junk", ".Entw&APw-rfe", ".Entw&APw-rfe.Alt"):
            for sub in ("cur", "new", "tmp"):
                self.assertTrue(os.path.isdir(os.path.join(self.path, name, sub)), name)
            self.assertTrue(os.path.isfile(os.path.join(self.path, name, "maildirfolder")))
        with open(os.path.join(self.path, "subscriptions"), "rb") as f:
            self.assertEqual(f.read(), b"INBOX\nSent\nDrafts\nTrash\nJunk\nEntw&APw-rfe.Alt\n")
        self.assertTrue(os.path.isfile(os.path.join(self.path, INDEX_NAME)))
        db = sqlite3.connect(os.path.join(self.path, INDEX_NAME))
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")

    def test_dovecotFolders(self) -> None:
        """Folders made by others (Dovecot, mutt) are listed; Dovecot's v2 subscriptions are read."""
        self.result(self.account.listFolders())
        os.makedirs(os.path.join(self.path, ".Lists.Twisted", "cur"))
        with open(os.path.join(self.path, "subscriptions"), "w") as f:
            f.write("V\t2\n\nLists\tTwisted\nINBOX\n")
        listing = {f.name: f for f in self.result(self.account.listFolders())}
        self.assertTrue(listing["Lists.Twisted"].selectable)
        self.assertTrue(listing["Lists.Twisted"].subscribed)
        self.assertFalse(listing["Lists"].selectable)
        self.assertEqual(readSubscriptions(os.path.join(self.path, "subscriptions")), ["Lists.Twisted", "INBOX"])

    def test_flagsInFileNames(self) -> None:
        """System flags go into the name (moving the file to cur/); keywords stay in the index."""
        self.deliver()
        folder = self.open()
        [record] = self.result(folder.sync()).messages
        [name] = self.files("new")
        self.assertEqual(name.split(",")[0], record.key)
        self.result(folder.setFlags([1], {"\\Seen", "\\Flagged", "$Work"}, "+"))
        self.assertEqual(self.files("new"), [])
        [name] = self.files("cur")
        self.assertTrue(name.endswith(":2,FS"), name)
        self.assertEqual(name.split(",")[0], record.key)
        self.result(folder.setFlags([1], {"\\Flagged"}, "-"))
        [name] = self.files("cur")
        self.assertTrue(name.endswith(":2,S"), name)
        self.restart()
        [record] = self.result(self.open().sync()).messages
        self.assertEqual(record.flags, frozenset({"\\Seen", "$Work"}))

    def test_unknownLettersKept(self) -> None:
        """Letters other than DFRST (Dovecot keyword letters...) are kept in the name."""
        self.deliver()
        [name] = self.files("new")
        os.rename(os.path.join(self.path, "new", name), os.path.join(self.path, "cur", name + ":2,Sab,x"))
        folder = self.open()
        [record] = self.result(folder.sync()).messages
        self.assertEqual(record.flags, frozenset({"\\Seen"}))
        self.result(folder.setFlags([1], {"\\Answered"}, "+"))
        self.assertEqual(self.files("cur"), [name + ":2,RSab,x"])

    def test_pop3Agrees(self) -> None:
        """POP3 sees the same messages: its UIDL is the key, its size the wire size."""
        self.deliver(b"a\r\n")
        self.deliver(b"bb\r\n")
        state = self.result(self.open().sync())
        maildir = Maildir(self.path, runSynchronously)
        infos = self.result(maildir.snapshot())
        self.assertEqual([(i.uid, i.size) for i in infos], [(m.key, m.size) for m in state.messages])

    def test_pop3DeleteSeen(self) -> None:
        """A POP3 DELE+QUIT is an expunge for IMAP; an IMAP expunge is gone from POP3."""
        self.deliver()
        self.deliver()
        folder = self.open()
        before = self.result(folder.sync())
        maildir = Maildir(self.path, runSynchronously)
        first, second = self.result(maildir.snapshot())
        self.result(maildir.markSeen([second]))
        self.result(maildir.remove([first]))
        state = self.result(folder.sync())
        self.assertEqual([(m.uid, m.flags) for m in state.messages], [(2, frozenset({"\\Seen"}))])
        self.assertGreater(state.highestModSeq, before.highestModSeq)
        self.result(folder.setFlags([2], {"\\Deleted"}, "+"))
        self.result(folder.expunge())
        self.assertEqual(self.result(maildir.snapshot()), [])

    def test_otherMUARenames(self) -> None:
        """A flag set by another Maildir reader (a rename) is seen, with a new modseq."""
        self.deliver()
        folder = self.open()
        before = self.result(folder.sync())
        [name] = self.files("new")
        os.rename(os.path.join(self.path, "new", name), os.path.join(self.path, "cur", name + ":2,RS"))
        [record] = self.result(folder.sync()).messages
        self.assertEqual(record.flags, frozenset({"\\Seen", "\\Answered"}))
        self.assertGreater(record.modSeq, before.highestModSeq)
        # The file is found at its new place.
        with self.result(folder.openMessage(1)) as f:
            self.assertTrue(f.read().endswith(b"body\n"))

    def test_movedBehindOurBack(self) -> None:
        """A message renamed since the last sync can still be opened and flagged."""
        self.deliver()
        folder = self.open()
        self.result(folder.sync())
        [name] = self.files("new")
        os.rename(os.path.join(self.path, "new", name), os.path.join(self.path, "cur", name + ":2,S"))
        with self.result(folder.openMessage(1)) as f:
            self.assertTrue(f.read().endswith(b"body\n"))
        [changed], _ = self.result(folder.setFlags([1], {"\\Flagged"}, "+"))
        self.assertEqual(changed.flags, frozenset({"\\Seen", "\\Flagged"}))
        self.assertEqual(self.files("cur"), [name + ":2,FS"])

    def test_lostIndex(self) -> None:
        """Without its index, a folder gets a new UIDVALIDITY and keeps every message and system flag."""
        self.deliver()
        self.deliver()
        folder = self.open()
        before = self.result(folder.sync())
        self.result(folder.setFlags([2], {"\\Seen"}, "+"))
        folder.close()
        self.registry.release(self.account)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(os.path.join(self.path, INDEX_NAME + suffix)):
                os.unlink(os.path.join(self.path, INDEX_NAME + suffix))
        self.registry, self.account = self.process()
        after = self.result(self.open().sync())
        self.assertNotEqual(after.uidValidity, before.uidValidity)
        self.assertEqual([m.key for m in after.messages], [m.key for m in before.messages])
        self.assertEqual(after.messages[1].flags, frozenset({"\\Seen"}))
        self.assertIn("Sent", [f.name for f in self.result(self.account.listFolders())])

    def test_duplicateFile(self) -> None:
        """A second file with a known key (a crashed copy by another MUA) changes nothing, sync after sync."""
        self.deliver()
        folder = self.open()
        before = self.result(folder.sync())
        [name] = self.files("new")
        with open(os.path.join(self.path, "cur", name + ":2,S"), "wb") as f:
            f.write(b"x\n")
        for _ in range(2):
            os.utime(os.path.join(self.path, "cur"))
            state = self.result(folder.sync())
            self.assertEqual([(m.uid, m.flags) for m in state.messages], [(1, frozenset())])
            self.assertEqual(state.highestModSeq, before.highestModSeq)

    def test_skippedByReaddir(self) -> None:
        """A file one listing missed (readdir during a rename) is not expunged when the second listing has it."""
        from mailnet.store.index import FolderIndex

        self.deliver()
        self.deliver()
        folder = self.open()
        self.result(folder.sync())
        listings = []
        original = FolderIndex._list

        def flaky(index):
            found = original(index)
            listings.append(found)
            if len(listings) == 1:
                found = {f for f in found if not f.startswith("new/") or f == sorted(found)[0]}
            return found

        self.patch(FolderIndex, "_list", flaky)
        os.utime(os.path.join(self.path, "new"))
        state = self.result(folder.sync())
        self.assertEqual(len(listings), 2)
        self.assertEqual([m.uid for m in state.messages], [1, 2])

    def test_fileWithoutIndexRow(self) -> None:
        """A file put into cur/ by anyone (or left by a crash before the index commit) gets a UID."""
        folder = self.open()
        self.result(folder.sync())
        with open(os.path.join(self.path, "cur", "1700000000.M1P1.other:2,S"), "wb") as f:
            f.write(b"Subject: x\r\n\r\nCRLF stored\r\nand LF\n")
        [record] = self.result(folder.sync()).messages
        self.assertEqual(record.key, "1700000000.M1P1.other")
        self.assertEqual(record.flags, frozenset({"\\Seen"}))
        self.assertEqual(record.size, len(b"Subject: x\r\n\r\nCRLF stored\r\nand LF\r\n"))

    def test_crashBeforeCommit(self) -> None:
        """
        A crash after a file operation but before the index commit (the
        transaction is rolled back) loses nothing: the next sync takes the
        file in, with a UID never used before.
        """
        from mailnet.store.index import FolderIndex

        self.deliver()
        folder = self.open()
        self.result(folder.sync())

        def crash(*args):
            raise RuntimeError("killed")

        patched = self.patch(FolderIndex, "_bump", crash)
        receiver = self.account.append("INBOX", frozenset({"\\Seen"}), None)
        receiver.write(MESSAGE)
        self.failureResultOf(receiver.finish(), RuntimeError)
        self.failureResultOf(folder.setFlags([1], {"\\Flagged"}, "+"), RuntimeError)
        patched.restore()
        # The process goes on: memory is reloaded from the index and the disk.
        state = self.result(folder.sync())
        self.assertEqual([(m.uid, m.flags) for m in state.messages], [(1, frozenset({"\\Flagged"})), (2, frozenset({"\\Seen"}))])
        # And so does the next start.
        folder.close()
        self.restart()
        again = self.result(self.open().sync())
        self.assertEqual([(m.uid, m.flags) for m in again.messages], [(m.uid, m.flags) for m in state.messages])

    def test_wireSizeOfFile(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"a\nb\r\nc")
        self.assertEqual(wireSizeOfFile(path), 7)

    def test_internalDateIsMtime(self) -> None:
        self.append = self.account.append("Drafts", frozenset(), 1600000000)
        self.append.write(MESSAGE)
        self.result(self.append.finish())
        [name] = self.files("cur", ".Drafts")
        self.assertEqual(os.stat(os.path.join(self.path, ".Drafts", "cur", name)).st_mtime, 1600000000)
        self.assertTrue(name.endswith(",W=%d:2," % (len(MESSAGE),)), name)

    def test_largeAppend(self) -> None:
        """A large APPEND goes to tmp/ as it arrives; nothing is left there after."""
        receiver = self.account.append("INBOX", frozenset({"\\Seen"}), None)
        line = b"x" * 998 + b"\r\n"
        for _ in range(200):
            receiver.write(line)
        uidValidity, uid = self.result(receiver.finish())
        self.assertEqual(self.files("tmp"), [])
        [record] = self.result(self.open().sync()).messages
        self.assertEqual(record.size, 200 * 1000)
        [name] = self.files("cur")
        self.assertEqual(os.path.getsize(os.path.join(self.path, "cur", name)), 200 * 999)

    def test_appendAbortedLarge(self) -> None:
        receiver = self.account.append("INBOX", frozenset(), None)
        receiver.write(b"x" * 100000)
        receiver.abort()
        self.assertEqual(self.files("tmp"), [])
        self.assertEqual(self.files("cur"), [])

    def test_listingSkipped(self) -> None:
        """While new/ and cur/ keep their (old enough) mtimes, a sync does not list them."""
        self.deliver()
        old = time.time() - 10
        for sub in ("new", "cur"):
            os.utime(os.path.join(self.path, sub), (old, old))
        folder = self.open()
        self.assertEqual(len(self.result(folder.sync()).messages), 1)
        self.deliver()
        for sub in ("new", "cur"):
            os.utime(os.path.join(self.path, sub), (old, old))
        self.assertEqual(len(self.result(folder.sync()).messages), 1)
        os.utime(os.path.join(self.path, "new"))
        self.assertEqual(len(self.result(folder.sync()).messages), 2)

    def test_otherProcess(self) -> None:
        """Two processes on one Maildir agree on UIDs and see each other's changes."""
        self.deliver()
        mine = self.open()
        self.result(mine.sync())
        _, other = self.process()
        theirs = self.open(account=other)
        self.assertEqual(self.result(theirs.sync()).uidValidity, mine.uidValidity)
        self.deliver()
        self.assertEqual([m.uid for m in self.result(theirs.sync()).messages], [1, 2])
        self.result(mine.setFlags([2], {"$Later"}, "+"))
        self.result(theirs.setFlags([1], {"\\Deleted"}, "+"))
        self.result(theirs.expunge())
        for folder in (mine, theirs):
            state = self.result(folder.sync())
            self.assertEqual([(m.uid, m.flags) for m in state.messages], [(2, frozenset({"$Later"}))])
        self.assertEqual(self.result(mine.sync()).highestModSeq, self.result(theirs.sync()).highestModSeq)

    def test_copyIntoFolderOpenElsewhere(self) -> None:
        """A folder open in another process sees messages copied into it."""
        self.deliver()
        inbox = self.open()
        self.result(inbox.sync())
        _, other = self.process()
        trash = self.open("Trash", account=other)
        self.result(trash.sync())
        self.result(inbox.copy([1], "Trash"))
        self.assertEqual([m.uid for m in self.result(trash.sync()).messages], [1])

    def test_parsedCached(self) -> None:
        """Messages are parsed once; the result is cached in the index, also for copies."""
        self.deliver()
        folder = self.open()
        self.result(folder.sync())
        first = self.result(folder.parsed([1]))[1]
        self.assertTrue(first.data.endswith(b"body\n"))
        self.restart()
        folder = self.open()
        self.assertEqual(self.result(folder.parsed([1]))[1].data, first.data)
        self.result(folder.copy([1], "Sent"))
        self.assertEqual(self.result(self.open("Sent").parsed([1]))[1].data, first.data)
        self.assertEqual(len(self.parses), 1)

    def test_parsedInMemory(self) -> None:
        """
        Parsed messages read once are kept in memory (the same objects, no
        database read, no load); at most PARSED_CACHE per folder, the
        oldest leaving first; an expunged message's entry goes with it.
        """
        self.patch(index, "PARSED_CACHE", 2)
        for _ in range(3):
            self.deliver()
        folder = self.open()
        self.result(folder.sync())
        loads = []
        self.account._load = lambda data: loads.append(data) or Parsed.fromBytes(data)
        first = self.result(folder.parsed([1, 2, 3]))
        self.assertEqual(list(first), [1, 2, 3])
        self.assertEqual(len(self.parses), 3)
        again = self.result(folder.parsed([3, 2]))
        self.assertEqual(list(again), [3, 2])
        self.assertIs(again[2], first[2])
        self.assertIs(again[3], first[3])
        self.assertEqual(loads, [])
        # Message 1 left the cache (the oldest): loaded from the database.
        self.assertIsNot(self.result(folder.parsed([1]))[1], first[1])
        self.assertEqual(len(loads), 1)
        self.assertEqual(len(self.parses), 3)
        self.result(folder.setFlags([1], {"\\Deleted"}, "+"))
        self.result(folder.expunge())
        self.assertEqual(self.result(folder.parsed([1])), {})
        self.assertNotIn(1, folder._index._parsed)

    def test_appendParsedAtOnce(self) -> None:
        """An APPENDed message is parsed while it is stored: its first FETCH ENVELOPE reads the index only."""
        receiver = self.account.append("Sent", frozenset(), None)
        receiver.write(MESSAGE)
        _, uid = self.result(receiver.finish())
        self.assertEqual(len(self.parses), 1)
        self.restart()
        parsed = self.result(self.open("Sent").parsed([uid]))[uid]
        self.assertEqual(parsed.data, MESSAGE.replace(b"\r\n", b"\n"))
        self.assertEqual(len(self.parses), 1)

    def test_appendUnparsable(self) -> None:
        """A parser failure does not fail the APPEND (it is logged; the message is parsed on first use)."""

        def broken(f):
            raise ValueError("parser bug")

        self.account._parse = broken
        receiver = self.account.append("Sent", frozenset(), None)
        receiver.write(MESSAGE)
        self.result(receiver.finish())
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(len(self.result(self.open("Sent").sync()).messages), 1)

    def test_deleteLeavesNothing(self) -> None:
        self.result(self.account.createFolder("Old"))
        receiver = self.account.append("Old", frozenset(), None)
        receiver.write(MESSAGE)
        self.result(receiver.finish())
        self.result(self.account.deleteFolder("Old"))
        self.assertFalse(os.path.exists(os.path.join(self.path, ".Old")))
        self.assertEqual(self.files("tmp"), [])

    def test_deletedWhileOpen(self) -> None:
        self.result(self.account.createFolder("Old"))
        folder = self.open("Old")
        self.result(self.account.deleteFolder("Old"))
        self.failureResultOf(folder.sync(), NoSuchFolder)

    def test_renameWhileOpen(self) -> None:
        """An open folder follows a rename (its name changes)."""
        self.result(self.account.createFolder("A"))
        folder = self.open("A")
        self.result(self.account.renameFolder("A", "B"))
        self.assertEqual(folder.name, "B")
        self.assertEqual(self.result(folder.sync()).messages, ())
        self.assertIs(self.open("B"), folder)


UIDLIST_V3 = """3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1
25006 :1276528487.M364837P9451.kurkku,S=1355,W=1394:2,
25017 W2481 :1276533073.M242911P3632.kurkku:2,F
"""


class UidListTests(DiskTestsMixin, SynchronousTestCase):
    """A folder's C{dovecot-uidlist}: UIDVALIDITY and UIDs are kept."""

    def setUp(self) -> None:
        self.setUpStore()
        self.folderPath = os.path.join(self.path, ".Archive")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(self.folderPath, sub))

    def put(self, name: str, data: bytes = b"Subject: x\n\nbody\n", sub: str = "cur") -> None:
        with open(os.path.join(self.folderPath, sub, name), "wb") as f:
            f.write(data)

    def test_readVersion3(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(UIDLIST_V3)
        self.assertEqual(
            readUidList(path),
            (1275660208, 25022, {"1276528487.M364837P9451.kurkku": (25006, None), "1276533073.M242911P3632.kurkku": (25017, 2481)}),
        )

    def test_import(self) -> None:
        """Known files keep their UIDs, new ones come after N; sizes and keywords are taken."""
        with open(os.path.join(self.folderPath, "dovecot-uidlist"), "w") as f:
            f.write(UIDLIST_V3)
        with open(os.path.join(self.folderPath, "dovecot-keywords"), "w") as f:
            f.write("0 $Junk\n1 $NonJunk\n")
        self.put("1276528487.M364837P9451.kurkku,S=1355,W=1394:2,Sb")
        self.put("1276533073.M242911P3632.kurkku:2,F")
        self.put("1276600000.M1P1.kurkku", sub="new")
        state = self.result(self.open("Archive").sync())
        self.assertEqual(state.uidValidity, 1275660208)
        self.assertEqual(
            [(m.uid, m.key, m.size, m.flags) for m in state.messages],
            [
                (25006, "1276528487.M364837P9451.kurkku", 1394, frozenset({"\\Seen", "$NonJunk"})),
                (25017, "1276533073.M242911P3632.kurkku", 2481, frozenset({"\\Flagged"})),
                (25022, "1276600000.M1P1.kurkku", len(b"Subject: x\r\n\r\nbody\r\n"), frozenset()),
            ],
        )
        self.assertEqual(state.uidNext, 25023)
        self.assertTrue(os.path.exists(os.path.join(self.folderPath, UIDLIST_IMPORTED)))

    def test_importVersion1(self) -> None:
        with open(os.path.join(self.folderPath, "dovecot-uidlist"), "w") as f:
            f.write("1 1000 8\n5 1276528487.M1P1.host:2,S\n")
        self.put("1276528487.M1P1.host:2,S")
        state = self.result(self.open("Archive").sync())
        self.assertEqual((state.uidValidity, state.uidNext), (1000, 8))
        self.assertEqual([m.uid for m in state.messages], [5])

    def test_notImportedTwice(self) -> None:
        """Once imported, a lost index means a new UIDVALIDITY (our later UIDs are not in the list)."""
        with open(os.path.join(self.folderPath, "dovecot-uidlist"), "w") as f:
            f.write(UIDLIST_V3)
        self.put("1276533073.M242911P3632.kurkku:2,F")
        self.assertEqual(self.result(self.open("Archive").sync()).uidValidity, 1275660208)
        self.registry.release(self.account)
        os.unlink(os.path.join(self.path, INDEX_NAME))
        self.registry, self.account = self.process()
        self.assertNotEqual(self.result(self.open("Archive").sync()).uidValidity, 1275660208)

    def test_brokenUidList(self) -> None:
        with open(os.path.join(self.folderPath, "dovecot-uidlist"), "w") as f:
            f.write("3 garbage\n")
        self.put("1276533073.M242911P3632.kurkku:2,F")
        self.assertEqual([m.uid for m in self.result(self.open("Archive").sync()).messages], [1])


class WatchTests(DiskTestsMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.setUpStore()

    def test_folderWatchesItsDirectories(self) -> None:
        """The first watch of a folder watches its new/ and cur/; closing stops it."""
        folder = self.result(self.account.openFolder("Sent"))
        calls = []
        stop = folder.watch(lambda: calls.append(1))
        [(paths, _)] = self.watcher.watches.values()
        self.assertEqual(paths, [os.path.join(self.path, ".Sent", d) for d in ("new", "cur")])
        self.watcher.fire()
        self.assertEqual(calls, [1])
        stop()
        self.assertEqual(self.watcher.watches, {})
        folder.watch(lambda: None)
        folder.close()
        self.assertEqual(self.watcher.watches, {})

    def test_renamedFolderWatched(self) -> None:
        """After a RENAME, a watched folder watches its new directories."""
        self.result(self.account.createFolder("A"))
        folder = self.open("A")
        folder.watch(lambda: None)
        self.result(self.account.renameFolder("A", "B"))
        [(paths, _)] = self.watcher.watches.values()
        self.assertEqual(paths, [os.path.join(self.path, ".B", d) for d in ("new", "cur")])

    def test_sessionsShare(self) -> None:
        """Two sessions of one user (one registry) share folders and hear each other's changes."""
        self.deliver()
        other = self.registry.open(ADDRESS)
        self.addCleanup(self.registry.release, other)
        self.assertIs(other, self.account)
        folder = self.open()
        self.result(folder.sync())
        calls = []
        folder.watch(lambda: calls.append(1))
        self.result(self.open(account=other).setFlags([1], {"\\Seen"}, "+"))
        self.assertEqual(calls, [1])
        receiver = other.append("INBOX", frozenset(), None)
        receiver.write(MESSAGE)
        self.result(receiver.finish())
        self.assertEqual(calls, [1, 1])

    def test_polling(self) -> None:
        clock = Clock()
        watcher = PollingWatcher(clock)
        directory = self.mktemp()
        os.makedirs(directory)
        calls = []
        stop = watcher.watch([directory], lambda: calls.append(1))
        clock.advance(1)
        self.assertEqual(calls, [])
        os.utime(directory, (1000, 1000))
        clock.advance(1)
        self.assertEqual(calls, [1])
        clock.advance(1)
        self.assertEqual(calls, [1])
        stop()
        os.utime(directory, (2000, 2000))
        clock.advance(1)
        self.assertEqual(calls, [1])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_keywordsToOtherProcess(self) -> None:
        """
        A keyword-only STORE moves no file; it still reaches another
        process's watch (the mtime of cur/ changes) and sync.
        """
        self.deliver()
        mine = self.open()
        self.result(mine.sync())
        self.result(mine.setFlags([1], {"\\Seen"}, "+"))
        clock = Clock()
        registry = AccountRegistry(self.mailStore, runSynchronously, PollingWatcher(clock))
        other = registry.open(ADDRESS)
        self.addCleanup(registry.release, other)
        theirs = self.open(account=other)
        self.result(theirs.sync())
        calls = []
        theirs.watch(lambda: calls.append(1))
        os.utime(os.path.join(self.path, "cur"), (1000, 1000))
        clock.advance(1)
        del calls[:]
        self.result(mine.setFlags([1], {"$Important"}, "+"))
        clock.advance(1)
        self.assertEqual(calls, [1])
        [record] = self.result(theirs.sync()).messages
        self.assertEqual(record.flags, frozenset({"\\Seen", "$Important"}))

    def test_registryForgets(self) -> None:
        """The last release closes an account; the next open makes a fresh one."""
        self.assertEqual(self.registry.active(), [ADDRESS])
        self.registry.release(self.account)
        self.assertEqual(self.registry.active(), [])
        self.account = self.registry.open(ADDRESS)
        self.assertEqual(self.registry.active(), [ADDRESS])


class InotifyTests(TestCase):
    """inotify with the real reactor (Linux)."""

    timeout = 10

    def test_inotify(self) -> None:
        watcher = makeWatcher(reactor)
        if not isinstance(watcher, InotifyWatcher):
            # Not Linux: the polling watcher is tested above.
            self.assertIsInstance(watcher, PollingWatcher)
            return None
        self.addCleanup(watcher.close)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        changed = Deferred()
        stop = watcher.watch([directory], lambda: changed.callback(None) if not changed.called else None)
        self.addCleanup(stop)
        with open(os.path.join(directory, "x"), "wb"):
            pass
        return changed


    def test_inotifySurvivesRemovedDirectory(self) -> None:
        """
        Removing a watched directory (a deleted folder) tells its watchers
        and leaves the other watches working.
        """
        watcher = makeWatcher(reactor)
        if not isinstance(watcher, InotifyWatcher):
            self.assertIsInstance(watcher, PollingWatcher)
            return None
        self.addCleanup(watcher.close)
        gone, kept = os.path.abspath(self.mktemp()), os.path.abspath(self.mktemp())
        os.makedirs(gone)
        os.makedirs(kept)
        goneSeen, keptSeen = Deferred(), Deferred()
        self.addCleanup(watcher.watch([gone], lambda: None if goneSeen.called else goneSeen.callback(None)))
        self.addCleanup(watcher.watch([kept], lambda: None if keptSeen.called else keptSeen.callback(None)))
        os.rmdir(gone)

        def removed(_):
            with open(os.path.join(kept, "x"), "wb"):
                pass
            return keptSeen

        return goneSeen.addCallback(removed)

    def test_inotifyFallsBackToPolling(self) -> None:
        """A directory inotify cannot watch is polled instead."""
        watcher = makeWatcher(reactor)
        if not isinstance(watcher, InotifyWatcher):
            return None
        self.addCleanup(watcher.close)
        clock = Clock()
        watcher._reactor = clock
        stop = watcher.watch([os.path.abspath(self.mktemp())], lambda: None)
        self.assertIsNotNone(watcher._fallback)
        self.assertEqual(len(watcher._fallback._watches), 1)
        stop()
        self.assertEqual(watcher._fallback._watches, {})


class RealmTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.mailStore = MaildirStore(self.mktemp(), runSynchronously, "test.host")
        self.registry = AccountRegistry(self.mailStore, runSynchronously)
        self.realm = MailRealm(MemoryAccountStore(), self.mailStore, self.registry)

    def test_account(self) -> None:
        """IMAP avatars are shared, not exclusive; each logout releases one reference."""
        interface, first, logoutFirst = self.realm.requestAvatar("Alice@example.test", None, IMailAccount)
        self.assertIs(interface, IMailAccount)
        self.assertTrue(verifyObject(IMailAccount, first))
        self.assertEqual(first.address, ADDRESS)
        _, second, logoutSecond = self.realm.requestAvatar(ADDRESS.encode("ascii"), None, IMailAccount)
        self.assertIs(first, second)
        logoutFirst()
        logoutFirst()
        self.assertEqual(self.registry.active(), [ADDRESS])
        logoutSecond()
        self.assertEqual(self.registry.active(), [])

    def test_pop3StillExclusive(self) -> None:
        self.realm.requestAvatar(ADDRESS, None, IMailAccount)
        self.realm.requestAvatar(ADDRESS, None, IMailbox)
        self.assertRaises(MailboxInUse, self.realm.requestAvatar, ADDRESS, None, IMailbox)
        self.realm.requestAvatar(ADDRESS, None, IMailAccount)

    def test_noRegistry(self) -> None:
        realm = MailRealm(MemoryAccountStore(), self.mailStore)
        self.assertRaises(NotImplementedError, realm.requestAvatar, ADDRESS, None, IMailAccount)

    def test_portal(self) -> None:
        portal = makePortal(MemoryAccountStore(), self.mailStore, runSynchronously)
        self.assertIsInstance(portal.realm.accounts, AccountRegistry)
        registry = AccountRegistry(self.mailStore, runSynchronously)
        self.assertIs(makePortal(MemoryAccountStore(), self.mailStore, runSynchronously, accounts=registry).realm.accounts, registry)


class BenchmarkTests(SynchronousTestCase):
    def test_smoke(self) -> None:
        """The index benchmark runs (on a tiny inbox) and reports every figure."""
        import sys

        benchmarks = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
        if benchmarks not in sys.path:
            sys.path.insert(0, benchmarks)
        from mailnetbench import index

        figures = index.measure(self.mktemp(), 20)
        self.assertIn("open after a restart (index on disk)", figures)
        self.assertTrue(all(value >= 0 for value in figures.values()))


class FileNameTests(SynchronousTestCase):
    """The flag helpers of L{mailnet.store.maildir}."""

    def test_splitInfo(self) -> None:
        from mailnet.store.maildir import splitInfo

        self.assertEqual(splitInfo("k,S=1,W=2:2,FSa,x"), ("k,S=1,W=2", "FSa", ",x"))
        self.assertEqual(splitInfo("k,S=1"), ("k,S=1", "", ""))
        self.assertEqual(splitInfo("k:2,"), ("k", "", ""))

    def test_withFlags(self) -> None:
        from mailnet.store.maildir import flagsOf, withFlags

        self.assertEqual(withFlags("k:2,Sa,x", frozenset({"\\Draft", "\\Deleted"})), "k:2,DTa,x")
        self.assertEqual(withFlags("k,W=3", frozenset()), "k,W=3:2,")
        self.assertEqual(flagsOf("DFRSTab"), frozenset({"\\Draft", "\\Flagged", "\\Answered", "\\Seen", "\\Deleted"}))


class TrustTests(SynchronousTestCase):
    def test_trusted(self) -> None:
        """A listing trusts a directory mtime once the clock moved well past it."""
        from mailnet.store.index import _trusted

        second = 10**9
        self.assertFalse(_trusted(100 * second + 5, 100 * second + 50 * 10**6))
        self.assertTrue(_trusted(100 * second + 5, 100 * second + 200 * 10**6))
        # Whole-second mtimes: the file system may round; wait two seconds.
        self.assertFalse(_trusted(100 * second, 101 * second))
        self.assertTrue(_trusted(100 * second, 103 * second))
