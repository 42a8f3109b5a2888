# -*- test-case-name: tests.test_delivery -*-
"""
Tests for L{mailnet.smtp.delivery}.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailnet.errors import SMTPReply
from mailnet.interfaces import IDeliveryAgent, IMessageReceiver
from mailnet.smtp.delivery import DeliveryAgent, FanOutReceiver
from mailnet.testing import FakeSender, MemoryAccountStore, RecordingReceiver


class RecordingStore:
    """Stands in for both the Maildir store and the relay queue."""

    def __init__(self) -> None:
        self.receivers: list = []

    def receive(self, returnPath, recipients):
        receiver = RecordingReceiver(returnPath, recipients)
        self.receivers.append(receiver)
        return receiver


class CountingAccounts:
    """Forwards to an account store and notes which look-ups were made."""

    def __init__(self, accounts) -> None:
        self.accounts = accounts
        self.calls: list = []

    def resolve(self, address):
        self.calls.append("resolve")
        return self.accounts.resolve(address)

    def isLocalDomain(self, domain):
        self.calls.append("isLocalDomain")
        return self.accounts.isLocalDomain(domain)


class DeliveryAgentTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.accounts = MemoryAccountStore()
        self.accounts.addDomain("example.test")
        self.accounts.addUser("alice@example.test", "x")
        self.accounts.addUser("bob@example.test", "x")
        self.accounts.addAlias("team@example.test", ["alice@example.test", "bob@example.test", "carol@remote.test"])
        self.mail = RecordingStore()
        self.queue = RecordingStore()
        self.agent = DeliveryAgent(self.accounts, self.mail, self.queue)

    def test_interface(self) -> None:
        verifyObject(IDeliveryAgent, self.agent)
        verifyObject(IMessageReceiver, FanOutReceiver([]))

    def test_localUserAccepted(self) -> None:
        self.agent.checkRecipient("alice@example.test", None)
        self.agent.checkRecipient("team@example.test", None)

    def test_unknownLocalUser(self) -> None:
        error = self.assertRaises(SMTPReply, self.agent.checkRecipient, "nobody@example.test", None)
        self.assertEqual(error.code, 550)
        self.assertTrue(error.text.startswith("5.1.1 "))

    def test_relayDeniedWithoutAuth(self) -> None:
        error = self.assertRaises(SMTPReply, self.agent.checkRecipient, "x@remote.test", None)
        self.assertEqual((error.code, error.text[:5]), (554, "5.7.1"))

    def test_relayAllowedWithAuth(self) -> None:
        self.agent.checkRecipient("x@remote.test", FakeSender("alice@example.test"))

    def test_relayWithoutQueueIsTemporary(self) -> None:
        agent = DeliveryAgent(self.accounts, self.mail, None)
        error = self.assertRaises(SMTPReply, agent.checkRecipient, "x@remote.test", FakeSender("alice@example.test"))
        self.assertEqual(error.code, 451)

    def test_routeExpandsAliasesOnce(self) -> None:
        local, remote = self.agent.route(["team@example.test", "alice@example.test", "dave@far.test"])
        self.assertEqual(local, ["alice@example.test", "bob@example.test"])
        self.assertEqual(remote, ["carol@remote.test", "dave@far.test"])

    def test_vanishedUserIsNotRelayed(self) -> None:
        """A local user removed between RCPT and DATA is never sent to the relay queue."""
        self.accounts.removeUser("bob@example.test")
        local, remote = self.agent.route(["bob@example.test", "alice@example.test"])
        self.assertEqual((local, remote), (["alice@example.test"], []))

    def test_aliasExpansionTooLargeIsTemporary(self) -> None:
        """
        Issue 11 item 6: an alias that expands past the limit is refused
        at RCPT with a temporary error (the administrator can fix it), and
        a message to it and others still goes to the others.
        """
        from mailnet.store.accounts import MAX_ALIAS_EXPANSION

        self.accounts.addAlias("huge@example.test", ["m%d@remote.test" % (i,) for i in range(MAX_ALIAS_EXPANSION + 1)])
        error = self.assertRaises(SMTPReply, self.agent.checkRecipient, "huge@example.test", None)
        self.assertEqual((error.code, error.text), (451, "4.3.0 <huge@example.test>: Alias expansion too large; try again later"))
        local, remote = self.agent.route(["huge@example.test", "alice@example.test"])
        self.assertEqual((local, remote), (["alice@example.test"], []))

    def test_unstorableMailboxRefusedAtRCPT(self) -> None:
        """
        Issue 11 item 9: a user whose name cannot be a mailbox directory
        (created before mailnet-admin checked names) is refused at RCPT,
        with the store's own test, instead of failing the whole message
        for every recipient at end of data; an alias that leads to it too.
        """
        self.accounts._users["/tmp/x@example.test"] = "x"
        self.accounts.addAlias("odd@example.test", ["/tmp/x@example.test", "alice@example.test"])
        for address in ("/tmp/x@example.test", "odd@example.test"):
            error = self.assertRaises(SMTPReply, self.agent.checkRecipient, address, None)
            self.assertEqual(error.code, 550)
            self.assertTrue(error.text.startswith("5.1.3 <%s>" % (address,)), error.text)
        # Accepted before the check existed: the others are still delivered.
        local, remote = self.agent.route(["odd@example.test", "bob@example.test"])
        self.assertEqual((local, remote), (["alice@example.test", "bob@example.test"], []))
        # A remote address with a slash in it is someone else's business.
        self.accounts.addAlias("fwd@example.test", ["/x@remote.test"])
        self.agent.checkRecipient("fwd@example.test", None)

    def test_positiveLookupsCached(self) -> None:
        """
        With a clock, a deliverable address is looked up once for RCPT and
        DATA; a new user is seen at once (misses are not cached); a removed
        one is forgotten after CACHE_SECONDS.
        """
        clock = Clock()
        counting = CountingAccounts(self.accounts)
        agent = DeliveryAgent(counting, self.mail, self.queue, clock=clock)
        agent.checkRecipient("alice@example.test", None)
        agent.route(["alice@example.test"])
        self.assertEqual(counting.calls.count("resolve"), 1)
        self.assertRaises(SMTPReply, agent.checkRecipient, "carol@example.test", None)
        self.accounts.addUser("carol@example.test", "x")
        agent.checkRecipient("carol@example.test", None)
        self.accounts.removeUser("alice@example.test")
        agent.checkRecipient("alice@example.test", None)
        clock.advance(DeliveryAgent.CACHE_SECONDS + 0.1)
        self.assertRaises(SMTPReply, agent.checkRecipient, "alice@example.test", None)

    def test_localOnly(self) -> None:
        receiver = self.agent.receive("s@remote.test", ["alice@example.test"])
        receiver.write(b"data")
        self.assertEqual(self.successResultOf(receiver.finish()), "test-id")
        [stored] = self.mail.receivers
        self.assertEqual(stored.recipients, ["alice@example.test"])
        self.assertEqual(stored.data, b"data")
        self.assertEqual(self.queue.receivers, [])

    def test_mixedGoesToBoth(self) -> None:
        receiver = self.agent.receive("alice@example.test", ["bob@example.test", "x@remote.test"])
        receiver.write(b"a")
        receiver.write(b"b")
        self.successResultOf(receiver.finish())
        self.assertEqual(self.mail.receivers[0].data, b"ab")
        self.assertEqual(self.queue.receivers[0].recipients, ["x@remote.test"])
        self.assertEqual(self.queue.receivers[0].data, b"ab")

    def test_fanOutFailure(self) -> None:
        """If any part cannot be stored, the whole message fails (the client retries)."""
        good = RecordingReceiver()
        bad = RecordingReceiver(result=OSError("disk full"))
        fanOut = FanOutReceiver([good, bad])
        self.failureResultOf(fanOut.finish(), OSError)

    def test_fanOutAbort(self) -> None:
        parts = [RecordingReceiver(), RecordingReceiver()]
        FanOutReceiver(parts).abort()
        self.assertTrue(all(p.aborted for p in parts))

    def test_fanOutFileInto(self) -> None:
        """A folder choice reaches the parts that store locally; the queue's part has none."""
        chosen = []

        class Local(RecordingReceiver):
            def fileInto(self, folder: str) -> None:
                chosen.append(folder)

        FanOutReceiver([Local(), RecordingReceiver()]).fileInto("Junk")
        self.assertEqual(chosen, ["Junk"])


class PostmasterTests(SynchronousTestCase):
    """RFC 5321 §4.5.1: postmaster is always accepted, never relayed."""

    def setUp(self) -> None:
        self.accounts = MemoryAccountStore()
        for domain in ("b.test", "a.test"):
            self.accounts.addDomain(domain)
        self.accounts.addUser("alice@b.test", "x")
        self.mail = RecordingStore()
        self.queue = RecordingStore()

    def test_primaryDomain(self) -> None:
        """<postmaster> is the configured primary domain's, else the first local one."""
        self.assertEqual(DeliveryAgent(self.accounts, self.mail, self.queue, primaryDomain="B.test").postmaster(), "postmaster@b.test")
        self.assertEqual(DeliveryAgent(self.accounts, self.mail, self.queue).postmaster(), "postmaster@a.test")
        agent = DeliveryAgent(self.accounts, self.mail, self.queue, primaryDomain="gone.test")
        self.assertEqual(agent.postmaster(), "postmaster@a.test")

    def test_noLocalDomain(self) -> None:
        agent = DeliveryAgent(MemoryAccountStore(), self.mail, self.queue)
        error = self.assertRaises(SMTPReply, agent.postmaster)
        self.assertEqual((error.code, error.text), (550, "5.1.1 <postmaster>: no local domain is configured here"))

    def test_withoutAccount(self) -> None:
        """No postmaster user or alias: a Maildir of its own, for the primary domain."""
        agent = DeliveryAgent(self.accounts, self.mail, self.queue, primaryDomain="b.test")
        for address in ("postmaster@b.test", "PostMaster@a.test"):
            agent.checkRecipient(address, None)
        self.assertEqual(agent.route(["postmaster@b.test", "postmaster@a.test"]), (["postmaster@b.test"], []))

    def test_aliasOrUser(self) -> None:
        self.accounts.addAlias("postmaster@b.test", ["alice@b.test"])
        agent = DeliveryAgent(self.accounts, self.mail, self.queue, primaryDomain="b.test")
        self.assertEqual(agent.route([agent.postmaster(), "postmaster@a.test"]), (["alice@b.test"], []))
        self.accounts.addUser("postmaster@a.test", "x")
        self.assertEqual(agent.route(["postmaster@a.test"]), (["postmaster@a.test"], []))

    def test_otherAddressesUnchanged(self) -> None:
        agent = DeliveryAgent(self.accounts, self.mail, self.queue, primaryDomain="b.test")
        self.assertRaises(SMTPReply, agent.checkRecipient, "abuse@b.test", None)
        self.assertRaises(SMTPReply, agent.checkRecipient, "postmaster@remote.test", None)


class DeliveredToTests(SynchronousTestCase):
    """
    A copy an alias forwards to a remote address carries Delivered-To: the
    alias, so that the message is recognised if it comes back (a loop).
    """

    def setUp(self) -> None:
        self.accounts = MemoryAccountStore()
        self.accounts.addDomain("example.test")
        self.accounts.addUser("alice@example.test", "x")
        self.accounts.addAlias("fwd@example.test", ["alice@example.test", "x@remote.test"])
        self.accounts.addAlias("other@example.test", ["y@remote.test"])
        self.mail = RecordingStore()
        self.queue = RecordingStore()
        self.agent = DeliveryAgent(self.accounts, self.mail, self.queue)

    def test_forwardedCopy(self) -> None:
        receiver = self.agent.receive("s@remote.test", ["fwd@example.test", "other@example.test", "plain@remote.test"])
        receiver.write(b"Received: by us\r\n\r\nbody\r\n")
        receiver.finish()
        [local] = self.mail.receivers
        plain, forwarded = self.queue.receivers
        self.assertEqual(local.recipients, ["alice@example.test"])
        self.assertEqual(local.data, b"Received: by us\r\n\r\nbody\r\n")
        self.assertEqual(plain.recipients, ["plain@remote.test"])
        self.assertEqual(plain.data, b"Received: by us\r\n\r\nbody\r\n")
        self.assertEqual(forwarded.recipients, ["x@remote.test", "y@remote.test"])
        self.assertEqual(
            forwarded.data,
            b"Delivered-To: fwd@example.test\r\nDelivered-To: other@example.test\r\nReceived: by us\r\n\r\nbody\r\n",
        )

    def test_relayedMailUnmarked(self) -> None:
        """An authenticated user's mail to remote addresses gets no Delivered-To."""
        receiver = self.agent.receive("alice@example.test", ["x@remote.test"])
        receiver.write(b"Subject: x\r\n\r\n")
        [entry] = self.queue.receivers
        self.assertEqual(entry.data, b"Subject: x\r\n\r\n")
