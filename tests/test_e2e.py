# -*- test-case-name: tests.test_e2e -*-
"""
End to end: a real mailnet server on 127.0.0.1, driven by Python's
C{smtplib} and C{poplib} in threads, as a mail client would.
"""

import poplib
import smtplib
import ssl

from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.support import startServer

MESSAGE = (
    b"From: bob@remote.test\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"First line.\r\n"
    b".A line that starts with a dot.\r\n"
    b"\r\n"
    b"Last line.\r\n"
)


def clientContext(certPath: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certPath)
    context.check_hostname = True
    return context


class DeliveryTests(TestCase):
    """
    Mail from another server arrives in the user's Maildir.
    """

    @inlineCallbacks
    def setUp(self):
        self.server = yield startServer(self)
        self.server.addUser("alice@example.test", "alice-secret")

    def smtp(self) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.server.ports["smtp"], local_hostname="client.remote.test", timeout=10)
        self.addCleanup(client.close)
        return client

    @inlineCallbacks
    def test_deliveredByteExact(self):
        """
        A message sent with smtplib is in C{new/}: Return-Path and Received
        headers, then the message exactly as sent, with the local line
        ending (LF) as mutt and Dovecot expect.
        """

        def send():
            client = self.smtp()
            refused = client.sendmail("bob@remote.test", ["alice@example.test"], MESSAGE)
            client.quit()
            return refused

        refused = yield deferToThread(send)
        self.assertEqual(refused, {})
        [path] = self.server.newFiles("alice@example.test")
        with open(path, "rb") as f:
            stored = f.read()
        self.assertTrue(stored.startswith(b"Return-Path: <bob@remote.test>\nReceived: from client.remote.test "))
        self.assertTrue(stored.endswith(b"\n" + MESSAGE.replace(b"\r\n", b"\n")), stored)
        self.assertNotIn(b"\r", stored)

    @inlineCallbacks
    def test_unknownUserAndRelay(self):
        """Unknown local users get 550 5.1.1; other domains 554 5.7.1 (no open relay)."""

        def probe():
            client = self.smtp()
            client.ehlo()
            client.mail("bob@remote.test")
            unknown = client.rcpt("nobody@example.test")
            relay = client.rcpt("victim@elsewhere.test")
            client.quit()
            return unknown, relay

        unknown, relay = yield deferToThread(probe)
        self.assertEqual(unknown[0], 550)
        self.assertTrue(unknown[1].startswith(b"5.1.1"), unknown)
        self.assertEqual(relay[0], 554)
        self.assertTrue(relay[1].startswith(b"5.7.1"), relay)
        self.assertEqual(self.server.newFiles("alice@example.test"), [])

    @inlineCallbacks
    def test_userAddedWhileRunning(self):
        """A user added to the store while the server runs receives mail at once."""
        self.server.addUser("carol@example.test", "carol-secret")

        def send():
            client = self.smtp()
            client.sendmail("bob@remote.test", ["carol@example.test"], MESSAGE)
            client.quit()

        yield deferToThread(send)
        self.assertEqual(len(self.server.newFiles("carol@example.test")), 1)


class RetrievalTests(TestCase):
    """
    Submission with STARTTLS and AUTH, then retrieval over POP3 with STLS
    and implicit TLS: the full round trip a user makes.
    """

    @inlineCallbacks
    def setUp(self):
        self.server = yield startServer(self)
        self.server.addUser("alice@example.test", "alice-secret")
        self.server.addUser("bob@example.test", "bob-secret")
        self.context = clientContext(self.server.certPath)

    def submit(self, implicit: bool = False) -> dict:
        if implicit:
            client = smtplib.SMTP_SSL("localhost", self.server.ports["smtps"], context=self.context, timeout=10)
        else:
            client = smtplib.SMTP("localhost", self.server.ports["submission"], timeout=10)
            client.starttls(context=self.context)
        try:
            client.login("bob@example.test", "bob-secret")
            message = MESSAGE.replace(b"bob@remote.test", b"bob@example.test")
            return client.sendmail("bob@example.test", ["alice@example.test"], message)
        finally:
            client.quit()

    def pop3(self, implicit: bool = False) -> poplib.POP3:
        if implicit:
            client = poplib.POP3_SSL("localhost", self.server.ports["pop3s"], context=self.context, timeout=10)
        else:
            client = poplib.POP3("localhost", self.server.ports["pop3"], timeout=10)
            client.stls(context=self.context)
        client.user("alice@example.test")
        client.pass_("alice-secret")
        return client

    @inlineCallbacks
    def test_submitThenRetrieve(self):
        yield deferToThread(self.submit)
        yield deferToThread(self.submit, True)

        def retrieve():
            client = self.pop3()
            count, size = client.stat()
            listing = client.list()[1]
            uids = client.uidl()[1]
            _, lines, octets = client.retr(1)
            client.quit()
            return count, size, listing, uids, lines, octets

        count, size, listing, uids, lines, octets = yield deferToThread(retrieve)
        self.assertEqual(count, 2)
        self.assertEqual(len(uids), 2)
        # The message retrieved moved to cur/ at QUIT; the other stays new.
        self.assertEqual(len(self.server.newFiles("alice@example.test")), 1)
        body = b"\r\n".join(lines) + b"\r\n"
        self.assertTrue(body.endswith(MESSAGE.replace(b"bob@remote.test", b"bob@example.test").split(b"\r\n\r\n", 1)[1]))
        self.assertIn(b"Received: from ", body)
        self.assertEqual(octets, int(listing[0].split()[1]))

    @inlineCallbacks
    def test_deleteOnlyOnQuit(self):
        yield deferToThread(self.submit)

        def deleteAndDrop():
            client = self.pop3(implicit=True)
            client.dele(1)
            client.sock.close()  # dropped: nothing is removed

        yield deferToThread(deleteAndDrop)
        yield task.deferLater(reactor, 0.2, lambda: None)

        def deleteAndQuit():
            client = self.pop3(implicit=True)
            count = client.stat()[0]
            client.dele(1)
            client.quit()
            client = self.pop3(implicit=True)
            after = client.stat()[0]
            client.quit()
            return count, after

        count, after = yield deferToThread(deleteAndQuit)
        self.assertEqual((count, after), (1, 0))

    @inlineCallbacks
    def test_plaintextAuthRefused(self):
        """Without TLS, AUTH is not offered on submission and POP3 USER is refused."""

        def tryPlain():
            client = smtplib.SMTP("127.0.0.1", self.server.ports["submission"], timeout=10)
            client.ehlo()
            offered = client.has_extn("auth")
            code, _ = client.docmd("AUTH", "PLAIN AGJvYkBleGFtcGxlLnRlc3QAYm9iLXNlY3JldA==")
            client.quit()
            pop = poplib.POP3("127.0.0.1", self.server.ports["pop3"], timeout=10)
            try:
                pop.user("alice@example.test")
                popError = None
            except poplib.error_proto as e:
                popError = e.args[0]
            pop.quit()
            return offered, code, popError

        offered, code, popError = yield deferToThread(tryPlain)
        self.assertFalse(offered)
        self.assertEqual(code, 538)
        self.assertTrue(popError.startswith(b"-ERR [AUTH]"), popError)


class RelayTests(TestCase):
    """
    Two servers: A routes C{b.test} to B.  Alice on A writes to bob on B.
    """

    @inlineCallbacks
    def setUp(self):
        self.b = yield startServer(self, domains=("b.test",))
        self.b.addUser("bob@b.test", "bob-secret")
        self.a = yield startServer(
            self,
            domains=("a.test",),
            routes={"b.test": ("127.0.0.1", self.b.ports["smtp"])},
        )
        self.a.addUser("alice@a.test", "alice-secret")

    @inlineCallbacks
    def test_relayedToOtherServer(self):
        context = clientContext(self.a.certPath)

        def send():
            client = smtplib.SMTP("localhost", self.a.ports["submission"], timeout=10)
            client.starttls(context=context)
            client.login("alice@a.test", "alice-secret")
            refused = client.sendmail("alice@a.test", ["bob@b.test"], b"From: alice@a.test\r\nSubject: hi\r\n\r\nhello bob\r\n")
            client.quit()
            return refused

        self.assertEqual((yield deferToThread(send)), {})
        for _ in range(100):
            if self.b.newFiles("bob@b.test"):
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        [path] = self.b.newFiles("bob@b.test")
        with open(path, "rb") as f:
            stored = f.read()
        self.assertTrue(stored.startswith(b"Return-Path: <alice@a.test>\n"))
        self.assertTrue(stored.endswith(b"\n\nhello bob\n"))


class MailLoopTests(TestCase):
    """
    Two servers whose aliases forward to each other (RFC 5321 §6.3): the
    loop is stopped on its second round by Delivered-To:, the sender gets
    one bounce, and the bounce does not loop either.
    """

    @inlineCallbacks
    def setUp(self):
        import attr

        from mailnet.smtp.relay import RelayService

        self.a = yield startServer(self, domains=("a.test",))
        self.b = yield startServer(self, domains=("b.test",))
        for server, other, domain in ((self.a, self.b, "b.test"), (self.b, self.a, "a.test")):
            [relay] = [s for s in server.service if isinstance(s, RelayService)]
            relay.settings = attr.evolve(relay.settings, routes={domain: ("127.0.0.1", other.ports["smtp"])})
        self.a.addUser("alice@a.test", "alice-secret")
        self.a.accounts.addAlias("loop@a.test", ["loop@b.test"])
        self.b.accounts.addAlias("loop@b.test", ["loop@a.test"])

    def queued(self, server) -> int:
        import os

        return len(os.listdir(os.path.join(server.dataDir, "queue", "env")))

    @inlineCallbacks
    def send(self, sender: str) -> object:
        def send():
            client = smtplib.SMTP("127.0.0.1", self.a.ports["smtp"], local_hostname="client.a.test", timeout=10)
            refused = client.sendmail(sender, ["loop@a.test"], b"From: " + sender.encode() + b"\r\nSubject: loop\r\n\r\naround\r\n")
            client.quit()
            return refused

        self.assertEqual((yield deferToThread(send)), {})
        # A queued message is passed on before it leaves its queue (and a
        # bounce is queued before the failed message leaves): both queues
        # are empty only once the loop has ended.
        for _ in range(200):
            yield task.deferLater(reactor, 0.05, lambda: None)
            if not self.queued(self.a) and not self.queued(self.b):
                break

    @inlineCallbacks
    def test_aliasLoopStops(self):
        yield self.send("alice@a.test")
        [bounce] = self.a.newFiles("alice@a.test")
        with open(bounce, "rb") as f:
            text = f.read()
        self.assertIn(b"Diagnostic-Code: smtp; 554 5.4.6 Mail forwarding loop for <loop@a.test>", text)
        self.assertIn(b"Delivered-To: loop@a.test\n", text)
        self.assertEqual((self.queued(self.a), self.queued(self.b)), (0, 0))

    @inlineCallbacks
    def test_senderInTheLoop(self):
        """The bounce goes to an address in the loop: it is stopped the same way, and dropped."""
        yield self.send("loop@a.test")
        self.assertEqual((self.queued(self.a), self.queued(self.b)), (0, 0))
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual((self.queued(self.a), self.queued(self.b)), (0, 0))
        self.assertEqual(self.a.newFiles("alice@a.test"), [])
