# -*- test-case-name: tests.test_quota -*-
"""
Storage quotas: the file, usage counting, the RCPT check, and a running
server refusing mail for a full mailbox until POP3 DELE makes room.
"""

import os
import poplib
import smtplib
import ssl

from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailnet import quota
from mailnet.errors import SMTPReply
from mailnet.quota import Limit, QuotaFile, Quotas, mailboxUsage, parseSize
from tests.support import startServer
from tests.test_admin import AdminTestCase


class FakeAccounts:
    def __init__(self, aliases=None):
        self.aliases = aliases or {}

    def resolve(self, address):
        return self.aliases.get(address, [address] if address.endswith("@example.test") else None)

    def users(self):
        return ["alice@example.test", "bob@example.test"]


def writeMessage(maildir: str, name: str, data: bytes = b"x") -> None:
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    with open(os.path.join(maildir, "cur", name), "wb") as f:
        f.write(data)


class SizeTests(SynchronousTestCase):
    def test_parse(self) -> None:
        self.assertEqual([parseSize(t) for t in ("2G", "500M", "100k", "1048576", "0")],
                         [2 * 1024**3, 500 * 1024**2, 102400, 1048576, None])
        for bad in ("", "-1", "1.5G", "lots"):
            self.assertRaises(ValueError, parseSize, bad)


class UsageTests(SynchronousTestCase):
    def test_count(self) -> None:
        """Every folder counts; sizes from S= where given, else from the file."""
        root = self.mktemp()
        writeMessage(root, "1.a.host,S=1000:2,S")
        writeMessage(root, "2.b.host:2,", b"12345")
        writeMessage(os.path.join(root, ".Sent"), "3.c.host,S=200,W=210:2,S")
        self.assertEqual(mailboxUsage(root), (1205, 3))
        self.assertEqual(mailboxUsage(os.path.join(root, "missing")), (0, 0))


class QuotasTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dataDir = self.mktemp()
        os.makedirs(self.dataDir)
        self.now = [1000.0]
        self.quotas = Quotas(self.dataDir, FakeAccounts({"all@example.test": ["alice@example.test", "x@remote.test"]}),
                             lambda a: os.path.join(self.dataDir, "mail", a), clock=lambda: self.now[0])
        self.file = QuotaFile(self.dataDir)
        self.box = os.path.join(self.dataDir, "mail", "alice@example.test")
        writeMessage(self.box, "1.a.host,S=900:2,")
        self.addCleanup(quota.forget, self.box)

    def refused(self, address, size=None):
        return self.assertRaises(SMTPReply, self.quotas.check, address, size)

    def test_noQuota(self) -> None:
        self.quotas.check("alice@example.test", 10**9)

    def test_full(self) -> None:
        """452 4.2.2 when full or when SIZE would overflow; 552 5.2.2 when SIZE can never fit."""
        self.file.set("users", "alice@example.test", Limit(1000))
        self.quotas.check("alice@example.test", 100)
        error = self.refused("alice@example.test", 101)
        self.assertEqual((error.code, error.text), (452, "4.2.2 <alice@example.test>: mailbox full"))
        error = self.refused("alice@example.test", 1001)
        self.assertEqual((error.code, error.text[:5]), (552, "5.2.2"))
        # Through an alias too; the remote target has no quota.
        self.assertEqual(self.refused("all@example.test", 200).code, 452)

    def test_messages(self) -> None:
        self.file.set("users", "alice@example.test", Limit(None, 1))
        self.assertEqual(self.refused("alice@example.test").code, 452)

    def test_domainDefault(self) -> None:
        """The domain's quota applies to users without their own; a user's own wins."""
        self.file.set("domains", "example.test", Limit(500))
        self.assertEqual(self.refused("alice@example.test").code, 452)
        self.now[0] += 1
        self.file.set("users", "alice@example.test", Limit(2000))
        self.quotas.check("alice@example.test", None)

    def test_changeTakesEffect(self) -> None:
        """A quota written by mailnet-admin applies within a second, without a restart."""
        self.quotas.check("alice@example.test", None)
        self.file.set("users", "alice@example.test", Limit(100))
        self.now[0] += 1.0
        self.assertEqual(self.refused("alice@example.test").code, 452)
        self.file.set("users", "alice@example.test", Limit())
        self.now[0] += 1.0
        self.quotas.check("alice@example.test", None)

    def test_usageKeptCurrent(self) -> None:
        """Deliveries add to the figure; removals make it counted again."""
        self.assertEqual(self.quotas.usage("alice@example.test"), (900, 1))
        quota.delivered(self.box, 50)
        self.assertEqual(self.quotas.usage("alice@example.test"), (950, 2))
        quota.forget(self.box)
        self.assertEqual(self.quotas.usage("alice@example.test"), (900, 1))
        # Changes by other programs are seen after USAGE_TTL.
        writeMessage(self.box, "2.b.host,S=10:2,")
        self.assertEqual(self.quotas.usage("alice@example.test"), (900, 1))
        self.now[0] += quota.USAGE_TTL
        self.assertEqual(self.quotas.usage("alice@example.test"), (910, 2))

    def test_countedInThread(self) -> None:
        """
        With a runner, an uncounted Maildir is counted through it (a thread
        pool in the server) and the check answers later; once counted,
        at once.  Scrapes show only counted mailboxes and count the others
        in the background.
        """
        from twisted.internet.defer import succeed

        ran = []

        def run(f, *args):
            ran.append(args)
            return succeed(f(*args))

        self.quotas.run = run
        self.file.set("users", "alice@example.test", Limit(800))
        self.assertEqual(self.quotas.states()["full"], [])
        self.assertEqual(ran, [(["alice@example.test"],)])
        self.assertEqual(self.quotas.states()["full"], ["alice@example.test"])
        quota.forget(self.box)
        d = self.quotas.check("alice@example.test", None)
        self.assertEqual(len(ran), 2)
        self.assertEqual(self.failureResultOf(d, SMTPReply).value.code, 452)
        self.assertRaises(SMTPReply, self.quotas.check, "alice@example.test", None)
        self.assertEqual(len(ran), 2)

    def test_warningOnce(self) -> None:
        """At 90 % the owner is warned once; below it again, the next crossing warns again."""
        warned = []
        self.quotas.warn = lambda *args: warned.append(args)
        self.file.set("users", "alice@example.test", Limit(1000))
        self.quotas.check("alice@example.test", None)
        self.quotas.check("alice@example.test", None)
        self.assertEqual(warned, [("alice@example.test", 900, 1000)])
        self.file.set("users", "alice@example.test", Limit(2000))
        self.now[0] += 1
        self.quotas.check("alice@example.test", None)
        self.assertFalse(os.path.exists(os.path.join(self.box, quota.WARNED_MARKER)))
        self.file.set("users", "alice@example.test", Limit(950))
        self.now[0] += 1
        self.quotas.check("alice@example.test", None)
        self.assertEqual(len(warned), 2)

    def test_warningMessage(self) -> None:
        from email import message_from_bytes

        message = message_from_bytes(quota.warningMessage("mx.example.test", "alice@example.test", 950, 1000, now=0))
        self.assertEqual(message["Subject"], "Your mailbox is 95% full")
        self.assertEqual(message["Auto-Submitted"], "auto-generated")

    def test_states(self) -> None:
        self.file.set("users", "alice@example.test", Limit(1000))
        self.file.set("users", "bob@example.test", Limit(10))
        self.addCleanup(quota.forget, os.path.join(self.dataDir, "mail", "bob@example.test"))
        self.assertEqual(self.quotas.states(), {"ok": ["bob@example.test"], "warning": ["alice@example.test"], "full": []})
        family = list(self.quotas.collect())[0]
        self.assertEqual({s.labels["state"]: s.value for s in family.samples}, {"ok": 1, "warning": 1, "full": 0})


class QuotaEndToEndTests(TestCase):
    """A full mailbox on a running server, filled and emptied by real clients."""

    @inlineCallbacks
    def test_fullThenRoom(self):
        server = yield startServer(self)
        server.addUser("alice@example.test", "alice-secret")
        message = b"From: bob@remote.test\r\nSubject: fill\r\n\r\n" + (b"x" * 98 + b"\r\n") * 30

        def send(size=None):
            client = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10)
            try:
                client.ehlo("client.remote.test")
                client.mail("bob@remote.test", ["SIZE=%d" % size] if size else [])
                code, text = client.rcpt("alice@example.test")
                if code == 250:
                    self.assertEqual(client.data(message)[0], 250)
                return code, text
            finally:
                client.close()

        QuotaFile(server.dataDir).set("users", "alice@example.test", Limit(4000))
        self.assertEqual((yield deferToThread(send))[0], 250)
        self.assertEqual((yield deferToThread(send)), (250, b"2.1.5 Recipient <alice@example.test> ok"))
        self.assertEqual((yield deferToThread(send)), (452, b"4.2.2 <alice@example.test>: mailbox full"))
        self.assertEqual((yield deferToThread(send, 5000))[0], 552)
        # Past 90 %: one warning, straight into the Maildir (past the quota).
        for _ in range(50):
            if len(server.newFiles("alice@example.test")) == 3:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        files = server.newFiles("alice@example.test")
        self.assertEqual(len(files), 3)
        with open(files[-1], "rb") as f:
            self.assertIn(b"Subject: Your mailbox is ", f.read())

        def deleteOne():
            context = ssl.create_default_context(cafile=server.certPath)
            pop = poplib.POP3_SSL("localhost", server.ports["pop3s"], context=context, timeout=10)
            pop.user("alice@example.test")
            pop.pass_("alice-secret")
            pop.dele(1)
            pop.quit()

        yield deferToThread(deleteOne)
        self.assertEqual((yield deferToThread(send))[0], 250)

    @inlineCallbacks
    def test_imapCopy(self):
        """
        Python's imaplib against a running server: a COPY past the quota is
        NO [OVERQUOTA]; one that fits shows in GETQUOTA at once; a MOVE
        changes nothing and is allowed at the quota.
        """
        import imaplib

        server = yield startServer(self)
        server.addUser("alice@example.test", "alice-secret")
        message = b"From: bob@remote.test\r\nSubject: fill\r\n\r\n" + (b"x" * 98 + b"\r\n") * 10

        def session():
            client = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10)
            client.ehlo("client.remote.test")
            for _ in range(2):
                client.sendmail("bob@remote.test", ["alice@example.test"], message)
            client.quit()
            usage = mailboxUsage(server.mailStore.pathFor("alice@example.test"))[0]
            # Room for one more copy, not for two.
            QuotaFile(server.dataDir).set("users", "alice@example.test", Limit(usage + usage * 3 // 4))
            server.service.quotas._lookedAt = None  # seen now, not within the second
            context = ssl.create_default_context(cafile=server.certPath)
            imap = imaplib.IMAP4_SSL("localhost", server.ports["imaps"], ssl_context=context, timeout=10)
            try:
                imap.login("alice@example.test", "alice-secret")
                imap.select("INBOX")
                before = imap.getquota('""')[1]
                results = [imap.copy("1:2", "Trash"), imap.copy("1", "Trash"), imap.getquota('""')[1]]
                results.append(mailboxUsage(server.mailStore.pathFor("alice@example.test")))
                results.append(imap.copy("2", "Trash"))
                results.append(imap._simple_command("MOVE", "1:2", "Trash"))
                results.append(imap.getquota('""')[1])
                return usage, before, results
            finally:
                imap.logout()

        usage, before, (refused, copied, after, counted, full, moved, afterMove) = yield deferToThread(session)
        self.assertEqual(refused, ("NO", [b"[OVERQUOTA] The mailbox is full"]))
        self.assertEqual(copied[0], "OK")
        self.assertEqual(full, ("NO", [b"[OVERQUOTA] The mailbox is full"]))
        self.assertEqual(moved[0], "OK")
        limit = (usage + usage * 3 // 4) // 1024
        self.assertEqual(before, [b'"" (STORAGE %d %d)' % (-(-usage // 1024), limit)])
        # At once, the figure a recount gives (not 60 s later).
        self.assertEqual(counted[1], 3)
        self.assertEqual(after, [b'"" (STORAGE %d %d)' % (-(-counted[0] // 1024), limit)])
        self.assertEqual(afterMove, after)
        self.assertEqual(mailboxUsage(server.mailStore.pathFor("alice@example.test")), counted)


class AdminQuotaTests(AdminTestCase):
    """mailnet-admin user quota, domain quota, user show, user list --usage."""

    def setUp(self) -> None:
        super().setUp()
        store = self.store()
        store.addDomain("example.test")
        store.addUser("alice@example.test", "h")
        store.addUser("bob@example.test", "h")
        writeMessage(os.path.join(self.dataDir, "mail", "example.test", "alice"), "1.a.host,S=524288:2,")

    def test_userQuota(self) -> None:
        out = self.ok("user", "quota", "alice@example.test", "2M", "--messages", "100")
        self.assertEqual(out, "alice@example.test  512K (25%) of 2M (user), 1 message(s) of 100\n")
        self.assertEqual(QuotaFile(self.dataDir).read()["users"], {"alice@example.test": {"octets": 2 * 1024**2, "messages": 100}})
        self.assertEqual(self.ok("user", "show", "alice@example.test"), out)
        self.ok("user", "quota", "alice@example.test", "0")
        self.assertEqual(QuotaFile(self.dataDir).read()["users"], {})

    def test_domainQuota(self) -> None:
        self.assertEqual(self.ok("domain", "quota", "example.test", "1G"),
                         "Default quota of example.test's users: 1G (a user's own quota wins).\n")
        self.assertEqual(
            self.ok("user", "list", "--usage"),
            "alice@example.test  512K (0%) of 1G (domain default), 1 message(s)\n"
            "bob@example.test  0 (0%) of 1G (domain default), 0 message(s)\n",
        )
        # Users with a quota are listed with their usage anyway.
        self.assertEqual(self.ok("user", "list"), self.ok("user", "list", "--usage"))

    def test_listShowsQuotas(self) -> None:
        """user list shows usage for users with a quota; the others stay bare."""
        self.ok("user", "quota", "bob@example.test", "1M")
        self.assertEqual(
            self.ok("user", "list"), "alice@example.test\nbob@example.test  0 (0%) of 1M (user), 0 message(s)\n"
        )

    def test_errors(self) -> None:
        self.assertIn("There is no user carol@example.test", self.fails("user", "quota", "carol@example.test", "1G"))
        self.assertIn("is not a local domain", self.fails("domain", "quota", "other.test", "1G"))
        self.assertIn("'lots' is not a quota", self.fails("user", "quota", "alice@example.test", "lots"))


class IMAPExpungeTests(SynchronousTestCase):
    """An IMAP expunge makes the mailbox's usage counted again; an APPEND adds to it."""

    def test_expunge(self) -> None:
        from mailnet.store.folders import AccountRegistry
        from mailnet.store.maildir import MaildirStore, runSynchronously
        from tests.test_folders import _noLoad, stubParse

        store = MaildirStore(self.mktemp(), runSynchronously, "mx.example.test")
        quotas = Quotas(self.mktemp(), FakeAccounts(), store.pathFor)
        registry = AccountRegistry(store, runSynchronously, parse=stubParse, load=_noLoad)
        account = registry.open("alice@example.test")
        self.addCleanup(registry.release, account)
        self.addCleanup(quota.forget, store.pathFor("alice@example.test"))
        for _ in range(2):
            receiver = store.receive("bob@example.test", ["alice@example.test"])
            receiver.write(b"Subject: x\r\n\r\nhello\r\n")
            self.successResultOf(receiver.finish())
        self.assertEqual(quotas.usage("alice@example.test")[1], 2)
        folder = self.successResultOf(account.openFolder("INBOX"))
        self.addCleanup(folder.close)
        self.successResultOf(folder.sync())
        self.successResultOf(folder.setFlags([1], {"\\Deleted"}, "+"))
        self.assertEqual(self.successResultOf(folder.expunge()), [1])
        self.assertEqual(quotas.usage("alice@example.test")[1], 1)
        # An APPEND adds to the figure.
        receiver = account.append("INBOX", frozenset(), None)
        receiver.write(b"Subject: y\r\n\r\nappended\r\n")
        self.successResultOf(receiver.finish())
        self.assertEqual(quotas.usage("alice@example.test")[1], 2)


class IMAPCopyTests(SynchronousTestCase):
    """
    An IMAP COPY adds to the mailbox's usage at once (not at the next
    recount, USAGE_TTL later); a MOVE within the account leaves it as it was.
    """

    def setUp(self) -> None:
        from mailnet.store.folders import AccountRegistry
        from mailnet.store.maildir import MaildirStore, runSynchronously
        from tests.test_folders import _noLoad, stubParse

        self.now = [1000.0]
        store = MaildirStore(self.mktemp(), runSynchronously, "mx.example.test")
        self.path = store.pathFor("alice@example.test")
        self.quotas = Quotas(self.mktemp(), FakeAccounts(), store.pathFor, clock=lambda: self.now[0])
        registry = AccountRegistry(store, runSynchronously, parse=stubParse, load=_noLoad)
        account = registry.open("alice@example.test")
        self.addCleanup(registry.release, account)
        self.addCleanup(quota.forget, self.path)
        for body in (b"hello\n", b"a longer message\nof two lines\n"):
            receiver = store.receive("bob@example.test", ["alice@example.test"])
            receiver.write(b"Subject: x\r\n\r\n" + body)
            self.successResultOf(receiver.finish())
        self.folder = self.successResultOf(account.openFolder("INBOX"))
        self.addCleanup(self.folder.close)
        self.successResultOf(self.folder.sync())
        self.before = self.quotas.usage("alice@example.test")
        self.assertEqual(self.before, mailboxUsage(self.path))

    def test_copy(self) -> None:
        self.successResultOf(self.folder.copy([1, 2], "Trash"))
        counted = mailboxUsage(self.path)
        self.assertEqual(counted, (2 * self.before[0], 4))
        # At once: the cached figure is not USAGE_TTL old.
        self.assertEqual(self.quotas.usage("alice@example.test"), counted)

    def test_move(self) -> None:
        self.successResultOf(self.folder.move([2], "Trash"))
        self.assertEqual(mailboxUsage(self.path), self.before)
        self.assertEqual(self.quotas.usage("alice@example.test"), self.before)

    def test_count(self) -> None:
        """Quotas.count: an uncounted Maildir is counted in the runner's thread, once."""
        runs = []

        def run(f, *args):
            runs.append(f)
            f(*args)
            return "counting"

        quota.forget(self.path)
        self.assertIsNone(self.quotas.count("alice@example.test"))  # no thread pool: usage counts
        self.quotas.run = run
        self.assertEqual(self.quotas.count("alice@example.test"), "counting")
        self.assertIsNone(self.quotas.count("alice@example.test"))
        self.assertEqual(len(runs), 1)
        self.assertEqual(self.quotas.usage("alice@example.test"), self.before)


class IMAPQuotaTests(SynchronousTestCase):
    """mailnet.imap._quota: the RFC 9208 responses, ready for the IMAP server."""

    def setUp(self) -> None:
        self.dataDir = self.mktemp()
        os.makedirs(self.dataDir)
        self.quotas = Quotas(self.dataDir, FakeAccounts(), lambda a: os.path.join(self.dataDir, "mail", a))
        self.box = os.path.join(self.dataDir, "mail", "alice@example.test")
        writeMessage(self.box, "1.a.host,S=1500:2,")
        self.addCleanup(quota.forget, self.box)

    def test_responses(self) -> None:
        from mailnet.imap import _quota

        self.assertEqual(_quota.capabilities(None), [])
        self.assertEqual(_quota.quotaRootResponses(self.quotas, "alice@example.test", b'"INBOX"'), [b'* QUOTAROOT "INBOX"'])
        QuotaFile(self.dataDir).set("users", "alice@example.test", Limit(10 * 1024, 5))
        self.quotas._lookedAt = None
        self.assertEqual(
            _quota.quotaRootResponses(self.quotas, "alice@example.test", b'"Sent \\"x\\""'),
            [b'* QUOTAROOT "Sent \\"x\\"" ""', b'* QUOTA "" (STORAGE 2 10 MESSAGE 1 5)'],
        )
        self.assertIsNone(_quota.refusal(self.quotas, "alice@example.test", 8000))
        self.assertEqual(_quota.refusal(self.quotas, "alice@example.test", 9000), "[OVERQUOTA] The mailbox is full")
        # A COPY of several messages: each counts against MESSAGE.
        self.assertIsNone(_quota.refusal(self.quotas, "alice@example.test", 10, 4))
        self.assertEqual(_quota.refusal(self.quotas, "alice@example.test", 10, 5), "[OVERQUOTA] The mailbox is full")



_RACER = """
import sys
from mailnet.quota import Limit, QuotaFile
dataDir, who, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.stdout.write("ready\\n")
sys.stdout.flush()
sys.stdin.readline()
for i in range(count):
    QuotaFile(dataDir).set("users", "%s%d@example.test" % (who, i), Limit(1024 * (i + 1)))
"""


class QuotaFileRaceTests(SynchronousTestCase):
    """Two C{mailnet-admin user quota} at the same moment: no change is lost."""

    def test_processesRacing(self) -> None:
        import subprocess
        import sys

        dataDir = os.path.abspath(self.mktemp())
        os.makedirs(dataDir)
        count = 60
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path))
        racers = [
            subprocess.Popen([sys.executable, "-c", _RACER, dataDir, who, str(count)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=os.getcwd())
            for who in ("a", "b")
        ]
        for racer in racers:
            self.assertEqual(racer.stdout.readline(), b"ready\n")
        for racer in racers:  # both start together
            racer.stdin.write(b"go\n")
            racer.stdin.flush()
        for racer in racers:
            racer.stdin.close()
            racer.stdout.close()
            self.assertEqual(racer.wait(timeout=60), 0)
        users = QuotaFile(dataDir).read()["users"]
        self.assertEqual(len(users), 2 * count)
        self.assertEqual(users["b%d@example.test" % (count - 1,)], {"octets": 1024 * count, "messages": None})
        # Nothing left behind but the file and its lock.
        self.assertEqual(sorted(os.listdir(dataDir)), [quota.QUOTA_FILE, quota.QUOTA_FILE + ".lock"])

    def test_threadsRacing(self) -> None:
        import threading

        dataDir = self.mktemp()
        os.makedirs(dataDir)
        start = threading.Event()

        def race(who: str) -> None:
            start.wait()
            for i in range(40):
                QuotaFile(dataDir).set("domains", "%s%d.test" % (who, i), Limit(None, i + 1))

        threads = [threading.Thread(target=race, args=(who,)) for who in "abc"]
        for thread in threads:
            thread.start()
        start.set()
        for thread in threads:
            thread.join(60)
        self.assertEqual(len(QuotaFile(dataDir).read()["domains"]), 120)
