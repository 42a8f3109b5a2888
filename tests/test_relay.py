# -*- test-case-name: tests.test_relay -*-
"""
Tests for L{mailnet.smtp.relay} and its SMTP client.

Scheduling runs on a L{task.Clock}; the next hops are small scripted SMTP
servers written here, listening on 127.0.0.1 port 0 (real sockets on the
real reactor), or connectors that fail at once.
"""

import datetime
import email
import email.utils
import os
import random
from collections import deque
from typing import Any, Deque, Dict, List, Optional

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.names import dns
from twisted.names import error as dnserror
from twisted.protocols.basic import LineReceiver
from twisted.trial import unittest

from mailnet.config import RelaySettings
from mailnet.smtp import _relayclient
from mailnet.smtp._relayclient import DataEncoder, Job, RelayClient, dotStuff
from mailnet.smtp.relay import FLUSH_POLL, RelayService, RoutingError, orderExchanges
from mailnet.store import queue as q
from mailnet.store.maildir import runSynchronously
from mailnet.testing import RecordingReceiver, makeCertificate

START = 1_800_000_000.0
MESSAGE = (
    b"From: alice@example.test\r\n"
    b"To: bob@b.test\r\n"
    b"Subject: Hello\r\n"
    b"Message-ID: <1@example.test>\r\n"
    b"\r\n"
    b"First line\r\n"
    b".a line that starts with a period\r\n"
    b"Last line\r\n"
)


# --- a scripted SMTP server ----------------------------------------------------


class ScriptedServer(LineReceiver):
    """
    An SMTP server that answers from its factory's script.  Only what the
    tests need; not mailnet's server.
    """

    delimiter = b"\r\n"

    def connectionMade(self) -> None:
        self.f = self.factory
        self.f.connections += 1
        self.f.open += 1
        self.mailFrom: Optional[str] = None
        self.rcpts: List[str] = []
        self.inData = False
        self.data: List[bytes] = []
        self.dataBytes = 0
        self.tls = False
        self.dead = False
        self.sendLine(b"220 fake.test ESMTP")

    def connectionLost(self, reason: Any = None) -> None:
        self.f.open -= 1

    def reply(self, text: str) -> None:
        self.sendLine(text.encode("utf-8"))

    def lineReceived(self, line: bytes) -> None:
        f = self.f
        if self.dead:
            return
        if self.inData:
            if line == b".":
                self.inData = False
                f.transactions.append(
                    {
                        "from": self.mailFrom,
                        "to": list(self.rcpts),
                        "data": b"".join(self.data),
                        "tls": self.tls,
                    }
                )
                self.reply(f.dataReplies.popleft() if f.dataReplies else "250 2.0.0 queued")
                return
            if line.startswith(b"."):
                line = line[1:]
            self.data.append(line + b"\r\n")
            self.dataBytes += len(line) + 2
            if f.dropAfterDataBytes is not None and self.dataBytes >= f.dropAfterDataBytes:
                f.dropAfterDataBytes = None
                f.dropped += 1
                self.dead = True
                self.transport.abortConnection()
            return
        f.commands.append(line)
        verb = line.split(b" ", 1)[0].upper()
        if verb == b"EHLO":
            extensions = list(f.extensions)
            if f.tlsOptions is not None and not self.tls:
                extensions.append("STARTTLS")
            lines = ["fake.test"] + extensions
            for text in lines[:-1]:
                self.reply("250-" + text)
            self.reply("250 " + lines[-1])
        elif verb == b"STARTTLS":
            self.reply("220 2.0.0 go ahead")
            if f.brokenTLS:
                # Not a TLS server after all: the ClientHello gets garbage.
                self.setRawMode()
                return
            self.transport.startTLS(f.tlsOptions)
            self.tls = True
        elif verb == b"AUTH":
            f.auth.append(line)
            self.reply(f.authReply)
        elif verb == b"MAIL":
            self.mailFrom = line[len("MAIL FROM:") :].decode()
            self.rcpts = []
            self.reply(f.mailReply)
        elif verb == b"RCPT":
            address = line[len("RCPT TO:<") :].split(b">")[0].decode()
            answer = f.rcptReplies.get(address, "250 2.1.5 ok")
            if answer.startswith("2"):
                self.rcpts.append(address)
            self.reply(answer)
        elif verb == b"DATA":
            self.inData = True
            self.data = []
            self.reply("354 go on")
        elif verb == b"QUIT":
            self.reply("221 bye")
            self.transport.loseConnection()
        else:
            self.reply("500 5.5.2 what")


    def rawDataReceived(self, data: bytes) -> None:
        self.transport.write(b"this is not TLS\r\n" * 20)
        self.transport.loseConnection()


class ScriptedFactory(Factory):
    protocol = ScriptedServer

    def __init__(self) -> None:
        self.connections = 0
        self.open = 0  # connections not yet closed
        self.transactions: List[Dict[str, Any]] = []
        self.commands: List[bytes] = []
        self.extensions: List[str] = ["PIPELINING", "8BITMIME", "SIZE 10000000"]
        self.mailReply = "250 2.1.0 ok"
        self.rcptReplies: Dict[str, str] = {}
        self.dataReplies: Deque[str] = deque()
        self.dropAfterDataBytes: Optional[int] = None
        self.dropped = 0
        self.tlsOptions: Any = None
        self.brokenTLS = False
        self.auth: List[bytes] = []
        self.authReply = "235 2.7.0 ok"


def realConnector(host: str, port: int, factory: Any) -> defer.Deferred:
    return TCP4ClientEndpoint(reactor, host, port, timeout=5).connect(factory)


class RelayTestMixin:
    """
    A queue in a temporary directory, a relay on a L{Clock}, and scripted
    servers.
    """

    def setUp(self) -> None:
        self.queueDir = self.mktemp()
        self.clock = Clock()
        self.clock.advance(START)
        self.injected: List[RecordingReceiver] = []
        self.services: List[RelayService] = []
        self.queue = q.DiskQueue(self.queueDir, runSynchronously, self.clock, "mx.example.test")

    def inject(self, returnPath: str, recipients: List[str]) -> RecordingReceiver:
        receiver = RecordingReceiver(returnPath, recipients, "bounce-id")
        self.injected.append(receiver)
        return receiver

    @defer.inlineCallbacks
    def startServer(self) -> Any:
        factory = ScriptedFactory()
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        factory.port = port.getHost().port
        return factory

    def makeRelay(self, queue: Optional[q.DiskQueue] = None, connector: Any = realConnector, **settings: Any) -> RelayService:
        relay = RelayService(
            queue or self.queue,
            RelaySettings(**settings),
            "mx.example.test",
            self.clock,
            self.inject,
            connector=connector,
            rng=random.Random(1),
        )
        relay.startService()
        self.services.append(relay)
        self.addCleanup(lambda: relay.running and relay.stopService())
        return relay

    def enqueue(self, sender: str, recipients: List[str], message: bytes = MESSAGE, queue: Optional[q.DiskQueue] = None) -> str:
        receiver = (queue or self.queue).receive(sender, recipients)
        receiver.write(message)
        entryId = self.successResultOf(receiver.finish())
        self.clock.advance(0)  # the relay starts due rounds from the reactor
        return entryId

    def envelope(self, entryId: str) -> Dict[str, Any]:
        import json

        with open(os.path.join(self.queueDir, "env", entryId + ".json")) as f:
            return json.load(f)

    def recipientStatus(self, entryId: str) -> Dict[str, str]:
        return {r["address"]: r["status"] for r in self.envelope(entryId)["recipients"]}

    def queued(self) -> List[str]:
        return [e["id"] for e in q.listEntries(self.queueDir)]


class DeliveryTests(RelayTestMixin, unittest.TestCase):
    """
    Delivery to scripted next hops over loopback sockets.
    """

    @defer.inlineCallbacks
    def test_oneTransactionPerDomain(self) -> Any:
        """
        Two recipients at one domain go in one transaction; the message
        arrives intact (dot-stuffing undone by the server) and leaves the
        queue.
        """
        server = yield self.startServer()
        relay = self.makeRelay(routes={"b.test": ("127.0.0.1", server.port)})
        self.enqueue("alice@example.test", ["bob@b.test", "carol@b.test"])
        yield relay.whenIdle()
        self.assertEqual(server.connections, 1)
        [transaction] = server.transactions
        self.assertEqual(transaction["from"], "<alice@example.test> SIZE=%d" % (len(MESSAGE),))
        self.assertEqual(transaction["to"], ["bob@b.test", "carol@b.test"])
        self.assertEqual(transaction["data"], MESSAGE)
        self.assertEqual(self.queued(), [])
        self.assertEqual(self.injected, [])

    @defer.inlineCallbacks
    def test_temporaryFailureRetriedOnSchedule(self) -> Any:
        """
        A 4xx answer to the data leaves the recipient pending; the retry
        happens C{retry_initial} seconds later, not before.
        """
        server = yield self.startServer()
        server.dataReplies.append("451 4.3.0 try again later")
        relay = self.makeRelay(routes={"b.test": ("127.0.0.1", server.port)}, retry_initial=60)
        entryId = self.enqueue("alice@example.test", ["bob@b.test"])
        yield relay.whenIdle()
        envelope = self.envelope(entryId)
        self.assertEqual(envelope["attempts"], 1)
        self.assertEqual(envelope["next_try"], START + 60)
        self.assertEqual(envelope["recipients"][0]["last_error"], "451 4.3.0 try again later")
        self.assertEqual(q.listEntries(self.queueDir)[0]["last_error"], "451 4.3.0 try again later")
        self.clock.advance(59)
        yield relay.whenIdle()
        self.assertEqual(server.connections, 1)
        self.clock.advance(1)
        yield relay.whenIdle()
        self.assertEqual(server.connections, 2)
        self.assertEqual(len(server.transactions), 2)
        self.assertEqual(self.queued(), [])
        self.assertEqual(self.injected, [])

    @defer.inlineCallbacks
    def test_permanentFailureBounces(self) -> Any:
        """
        A 5xx answer to RCPT fails that recipient at once, and the sender
        gets an RFC 3464 bounce naming it; the other recipient is delivered.
        """
        server = yield self.startServer()
        server.rcptReplies["nobody@b.test"] = "550 5.1.1 <nobody@b.test>: no such user"
        relay = self.makeRelay(routes={"b.test": ("127.0.0.1", server.port)})
        self.enqueue("alice@example.test", ["bob@b.test", "nobody@b.test"])
        yield relay.whenIdle()
        self.assertEqual(server.transactions[0]["to"], ["bob@b.test"])
        self.assertEqual(self.queued(), [])
        [bounce] = self.injected
        self.assertEqual(bounce.returnPath, "")
        self.assertEqual(bounce.recipients, ["alice@example.test"])
        self.assertTrue(bounce.finished)
        message = email.message_from_bytes(bounce.data)
        self.assertEqual(message.get_content_type(), "multipart/report")
        self.assertEqual(message.get_param("report-type"), "delivery-status")
        self.assertEqual(message["From"], "Mail Delivery System <MAILER-DAEMON@mx.example.test>")
        self.assertEqual(message["To"], "<alice@example.test>")
        human, status, headers = message.get_payload()
        self.assertIn("nobody@b.test", human.get_payload(decode=True).decode())
        perMessage, perRecipient = status.get_payload()
        self.assertEqual(perMessage["Reporting-MTA"], "dns; mx.example.test")
        self.assertEqual(perRecipient["Final-Recipient"], "rfc822; nobody@b.test")
        self.assertEqual(perRecipient["Action"], "failed")
        self.assertEqual(perRecipient["Status"], "5.1.1")
        self.assertEqual(perRecipient["Diagnostic-Code"], "smtp; 550 5.1.1 <nobody@b.test>: no such user")
        self.assertEqual(perRecipient["Remote-MTA"], "dns; 127.0.0.1")
        self.assertEqual(headers.get_content_type(), "text/rfc822-headers")
        self.assertIn("Subject: Hello", headers.get_payload())
        self.assertNotIn("First line", headers.get_payload())

    @defer.inlineCallbacks
    def test_permanentFailureAtDataBounces(self) -> Any:
        """
        A 5xx answer at the end of the data fails every accepted recipient.
        """
        server = yield self.startServer()
        server.dataReplies.append("554 5.7.1 spam")
        relay = self.makeRelay(routes={"b.test": ("127.0.0.1", server.port)})
        self.enqueue("alice@example.test", ["bob@b.test", "carol@b.test"])
        yield relay.whenIdle()
        [bounce] = self.injected
        status = email.message_from_bytes(bounce.data).get_payload()[1]
        recipients = [(b["Final-Recipient"], b["Status"]) for b in status.get_payload()[1:]]
        self.assertEqual(recipients, [("rfc822; bob@b.test", "5.7.1"), ("rfc822; carol@b.test", "5.7.1")])

    @defer.inlineCallbacks
    def test_nullSenderNeverBounces(self) -> Any:
        """
        A message from the null sender (itself a bounce) that fails is
        dropped without a notification: no loops.
        """
        server = yield self.startServer()
        server.rcptReplies["nobody@b.test"] = "550 5.1.1 no such user"
        relay = self.makeRelay(routes={"b.test": ("127.0.0.1", server.port)})
        self.enqueue("", ["nobody@b.test"])
        yield relay.whenIdle()
        self.assertEqual(server.commands[1], b"MAIL FROM:<> SIZE=%d" % (len(MESSAGE),))
        self.assertEqual(self.queued(), [])
        self.assertEqual(self.injected, [])

    @defer.inlineCallbacks
    def test_droppedDuringData(self) -> Any:
        """
        A connection lost in the middle of the data is a temporary failure;
        the retry sends the whole message.
        """
        server = yield self.startServer()
        server.dropAfterDataBytes = 20
        relay = self.makeRelay(routes={"b.test": ("127.0.0.1", server.port)}, retry_initial=30)
        entryId = self.enqueue("alice@example.test", ["bob@b.test"])
        yield relay.whenIdle()
        self.assertEqual(server.dropped, 1)
        self.assertEqual(server.transactions, [])
        self.assertEqual(self.recipientStatus(entryId), {"bob@b.test": "pending"})
        self.assertIn("during DATA", self.envelope(entryId)["last_error"])
        self.clock.advance(30)
        yield relay.whenIdle()
        self.assertEqual([t["data"] for t in server.transactions], [MESSAGE])
        self.assertEqual(self.queued(), [])

    @defer.inlineCallbacks
    def test_refusedConnectionIsTemporary(self) -> Any:
        """
        A refused connection leaves the message queued with the reason.
        """
        # A port that was just closed refuses connections.
        listening = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory())
        deadPort = listening.getHost().port
        yield listening.stopListening()
        relay = self.makeRelay(routes={"b.test": ("127.0.0.1", deadPort)})
        entryId = self.enqueue("alice@example.test", ["bob@b.test"])
        yield relay.whenIdle()
        self.assertIn("4.4.1 cannot connect to 127.0.0.1:%d" % (deadPort,), self.envelope(entryId)["last_error"])
        self.assertEqual(self.recipientStatus(entryId), {"bob@b.test": "pending"})

    @defer.inlineCallbacks
    def test_restartResumesWithoutResending(self) -> Any:
        """
        After a restart (a new queue and relay on the same directory, the
        old one never stopped, as after kill -9), delivered recipients are
        not sent again; pending ones are.
        """
        good = yield self.startServer()
        flaky = yield self.startServer()
        flaky.dataReplies.append("421 4.3.2 shutting down")
        routes = {"b.test": ("127.0.0.1", good.port), "c.test": ("127.0.0.1", flaky.port)}
        relay = self.makeRelay(routes=routes, retry_initial=600)
        entryId = self.enqueue("alice@example.test", ["bob@b.test", "carl@c.test"])
        yield relay.whenIdle()
        self.assertEqual(self.recipientStatus(entryId), {"bob@b.test": "delivered", "carl@c.test": "pending"})
        # "kill -9": forget the old service without stopping it cleanly.
        relay.running = False
        relay._stopping = True
        self.clock = Clock()
        self.clock.advance(START + 600)
        queue = q.DiskQueue(self.queueDir, runSynchronously, self.clock, "mx.example.test")
        relay2 = self.makeRelay(queue=queue, routes=routes, retry_initial=600)
        self.clock.advance(0)
        yield relay2.whenIdle()
        self.assertEqual(len(good.transactions), 1)
        self.assertEqual([t["to"] for t in flaky.transactions], [["carl@c.test"], ["carl@c.test"]])
        self.assertEqual(self.queued(), [])

    @defer.inlineCallbacks
    def test_startTLS(self) -> Any:
        """
        When the next hop offers STARTTLS, the message goes encrypted.
        """
        server = yield self.startServer()
        directory = self.mktemp()
        os.makedirs(directory)
        certPath, keyPath = makeCertificate(directory)
        with open(certPath) as c, open(keyPath) as k:
            server.tlsOptions = PrivateCertificate.loadPEM(c.read() + k.read()).options()
        relay = self.makeRelay(routes={"b.test": ("127.0.0.1", server.port)}, require_tls=True)
        self.enqueue("alice@example.test", ["bob@b.test"])
        yield relay.whenIdle()
        [transaction] = server.transactions
        self.assertTrue(transaction["tls"])
        self.assertEqual(transaction["data"], MESSAGE)
        # RFC 3207 §4.2: EHLO again after the handshake.
        self.assertEqual([c.split()[0] for c in server.commands[:4]], [b"EHLO", b"STARTTLS", b"EHLO", b"MAIL"])

    @defer.inlineCallbacks
    def test_failedHandshakeFallsBackToPlaintext(self) -> Any:
        """
        Opportunistic TLS (RFC 7435): when the STARTTLS handshake fails, the
        same host is tried again at once without STARTTLS.
        """
        server = yield self.startServer()
        server.tlsOptions = object()
        server.brokenTLS = True
        relay = self.makeRelay(routes={"b.test": ("127.0.0.1", server.port)})
        self.enqueue("alice@example.test", ["bob@b.test"])
        yield relay.whenIdle()
        self.assertEqual(server.connections, 2)
        [transaction] = server.transactions
        self.assertFalse(transaction["tls"])
        self.assertEqual(self.queued(), [])

    @defer.inlineCallbacks
    def test_failedHandshakeWithRequireTLS(self) -> Any:
        """
        With C{require_tls} a failed handshake is not retried in plaintext.
        """
        server = yield self.startServer()
        server.tlsOptions = object()
        server.brokenTLS = True
        relay = self.makeRelay(routes={"b.test": ("127.0.0.1", server.port)}, require_tls=True)
        entryId = self.enqueue("alice@example.test", ["bob@b.test"])
        yield relay.whenIdle()
        self.assertEqual(server.connections, 1)
        self.assertEqual(server.transactions, [])
        self.assertIn("4.7.5 TLS with 127.0.0.1 failed", self.envelope(entryId)["last_error"])

    @defer.inlineCallbacks
    def test_requireTLSWithoutSTARTTLS(self) -> Any:
        """
        With C{require_tls}, a next hop that does not offer STARTTLS gets
        nothing: the message stays queued.
        """
        server = yield self.startServer()
        relay = self.makeRelay(routes={"b.test": ("127.0.0.1", server.port)}, require_tls=True)
        entryId = self.enqueue("alice@example.test", ["bob@b.test"])
        yield relay.whenIdle()
        self.assertEqual(server.transactions, [])
        self.assertNotIn(b"MAIL", b" ".join(server.commands))
        self.assertIn("4.7.10", self.envelope(entryId)["last_error"])

    @defer.inlineCallbacks
    def test_smarthostAuth(self) -> Any:
        """
        Everything goes to the smarthost, which gets AUTH PLAIN with the
        configured credentials (allowed in the clear on loopback only).
        """
        server = yield self.startServer()
        server.extensions.append("AUTH PLAIN LOGIN")
        relay = self.makeRelay(
            smarthost=("127.0.0.1", server.port), smarthost_user="relayuser", smarthost_password="s3cret"
        )
        self.enqueue("alice@example.test", ["bob@b.test", "dan@d.test"])
        yield relay.whenIdle()
        import base64

        self.assertEqual(server.auth[0], b"AUTH PLAIN " + base64.b64encode(b"\0relayuser\0s3cret"))
        self.assertEqual(sorted(t["to"][0] for t in server.transactions), ["bob@b.test", "dan@d.test"])

    @defer.inlineCallbacks
    def test_smarthostAuthRefused(self) -> Any:
        """
        Refused credentials are a temporary failure (fixable by the
        administrator), and no MAIL is sent.
        """
        server = yield self.startServer()
        server.extensions.append("AUTH PLAIN")
        server.authReply = "535 5.7.8 bad credentials"
        relay = self.makeRelay(smarthost=("127.0.0.1", server.port), smarthost_user="u", smarthost_password="p")
        entryId = self.enqueue("alice@example.test", ["bob@b.test"])
        yield relay.whenIdle()
        self.assertEqual(server.transactions, [])
        self.assertIn("refused our credentials", self.envelope(entryId)["last_error"])
        self.assertEqual(self.injected, [])

    @defer.inlineCallbacks
    def test_flushFile(self) -> Any:
        """
        L{q.requestFlush} makes the running relay retry at its next poll,
        long before the back-off is over.
        """
        server = yield self.startServer()
        server.dataReplies.append("451 4.3.0 later")
        relay = self.makeRelay(routes={"b.test": ("127.0.0.1", server.port)}, retry_initial=3600)
        self.enqueue("alice@example.test", ["bob@b.test"])
        yield relay.whenIdle()
        q.requestFlush(self.queueDir)
        self.clock.advance(FLUSH_POLL)
        self.clock.advance(0)
        yield relay.whenIdle()
        self.assertEqual(server.connections, 2)
        self.assertEqual(self.queued(), [])
        self.assertFalse(os.path.exists(os.path.join(self.queueDir, "flush")))


class ScheduleTests(RelayTestMixin, unittest.TestCase):
    """
    The retry schedule, expiry and limits, with connectors that never touch
    the network.
    """

    def refusingConnector(self, host: str, port: int, factory: Any) -> defer.Deferred:
        self.connects.append((host, port))
        return defer.fail(ConnectionRefusedError())

    def setUp(self) -> None:
        RelayTestMixin.setUp(self)
        self.connects: List[Any] = []

    def test_backoffDoublesToMax(self) -> None:
        """
        Attempts come C{retry_initial} apart, then twice as far each time,
        never more than C{retry_max}.
        """
        relay = self.makeRelay(
            connector=self.refusingConnector, routes={"b.test": ("192.0.2.1", 25)}, retry_initial=60, retry_max=300
        )
        entryId = self.enqueue("alice@example.test", ["bob@b.test"])
        self.assertEqual(len(self.connects), 1)
        gaps = []
        last = self.clock.seconds()
        for _ in range(5):
            nextTry = self.envelope(entryId)["next_try"]
            gaps.append(nextTry - last)
            self.clock.advance(nextTry - self.clock.seconds() - 1)
            count = len(self.connects)
            self.clock.advance(1)
            self.assertEqual(len(self.connects), count + 1)
            last = nextTry
        self.assertEqual(gaps, [60, 120, 240, 300, 300])
        self.assertEqual(self.envelope(entryId)["attempts"], 6)
        self.assertTrue(relay.running)

    def test_delayWarningOnceThenExpiry(self) -> None:
        """
        After C{delay_warning_after} the sender is warned once (Action:
        delayed); after C{give_up_after} the recipient fails with 5.4.7 and
        the last error, and the message leaves the queue.
        """
        self.makeRelay(
            connector=self.refusingConnector,
            routes={"b.test": ("192.0.2.1", 25)},
            retry_initial=100,
            retry_max=100,
            delay_warning_after=250,
            give_up_after=1000,
        )
        self.enqueue("alice@example.test", ["bob@b.test"])
        self.clock.pump([100, 100, 99])
        self.assertEqual(self.injected, [])
        self.clock.advance(1)
        [warning] = self.injected
        message = email.message_from_bytes(warning.data)
        self.assertIn("Delayed", message["Subject"])
        block = message.get_payload()[1].get_payload()[1]
        self.assertEqual(block["Action"], "delayed")
        self.assertEqual(block["Status"], "4.4.1")
        self.assertEqual(block["Will-Retry-Until"], email.utils.format_datetime(
            datetime.datetime.fromtimestamp(START + 1000, datetime.timezone.utc)))
        self.clock.pump([100] * 6)
        self.assertEqual(len(self.injected), 1)
        self.assertEqual(len(self.queued()), 1)
        self.clock.advance(100)
        self.assertEqual(self.queued(), [])
        self.assertEqual(len(self.injected), 2)
        block = email.message_from_bytes(self.injected[1].data).get_payload()[1].get_payload()[1]
        self.assertEqual(block["Action"], "failed")
        self.assertEqual(block["Status"], "5.4.7")
        self.assertIn("cannot connect to 192.0.2.1:25", block["Diagnostic-Code"])
        self.assertEqual(len(self.connects), 11)

    def test_nullSenderGetsNoDelayWarning(self) -> None:
        """
        Neither delay warnings nor expiry bounces go to the null sender.
        """
        self.makeRelay(
            connector=self.refusingConnector,
            routes={"b.test": ("192.0.2.1", 25)},
            retry_initial=100,
            delay_warning_after=100,
            give_up_after=300,
        )
        self.enqueue("", ["bob@b.test"])
        self.clock.pump([100] * 5)
        self.assertEqual(self.queued(), [])
        self.assertEqual(self.injected, [])

    def test_perDomainConnectionLimit(self) -> None:
        """
        No more than C{max_connections_per_domain} connections at once to a
        domain, and C{max_connections} in all; the rest wait for a slot.
        """
        hanging: List[defer.Deferred] = []

        def connector(host: str, port: int, factory: Any) -> defer.Deferred:
            self.connects.append(host)
            d: defer.Deferred = defer.Deferred()
            hanging.append(d)
            return d

        self.makeRelay(
            connector=connector,
            routes={"b.test": ("hop-b", 25), "c.test": ("hop-c", 25), "d.test": ("hop-d", 25)},
            max_connections=3,
            max_connections_per_domain=2,
        )
        for _ in range(3):
            self.enqueue("alice@example.test", ["bob@b.test"])
        self.enqueue("alice@example.test", ["carl@c.test"])
        self.enqueue("alice@example.test", ["dan@d.test"])
        self.assertEqual(self.connects, ["hop-b", "hop-b", "hop-c"])
        hanging[0].errback(ConnectionRefusedError())
        # The third b.test message waited longest, but b.test is at its limit... no longer.
        self.assertEqual(self.connects, ["hop-b", "hop-b", "hop-c", "hop-b"])
        hanging[2].errback(ConnectionRefusedError())
        self.assertEqual(self.connects[-1], "hop-d")

    def test_flushDuringRound(self) -> None:
        """
        A flush that arrives while a round is in progress starts another
        round as soon as that one ends, not after the back-off.
        """
        hanging: List[defer.Deferred] = []

        def connector(host: str, port: int, factory: Any) -> defer.Deferred:
            self.connects.append(host)
            hanging.append(defer.Deferred())
            return hanging[-1]

        relay = self.makeRelay(connector=connector, routes={"b.test": ("hop-b", 25)}, retry_initial=3600)
        self.enqueue("alice@example.test", ["bob@b.test"])
        relay.flush()
        self.assertEqual(len(self.connects), 1)
        hanging[0].errback(ConnectionRefusedError())
        self.clock.advance(0)
        self.assertEqual(len(self.connects), 2)

    def test_stopDoesNotWaitForever(self) -> None:
        """
        Stopping waits for rounds in progress, but not longer than
        C{STOP_GRACE} (a DNS look-up may take a minute).
        """
        from mailnet.smtp.relay import STOP_GRACE

        class SlowResolver:
            def lookupMailExchange(self, name: str, timeout: Any = None) -> defer.Deferred:
                return defer.Deferred()

        relay = RelayService(
            self.queue, RelaySettings(), "mx.example.test", self.clock, self.inject, resolver=SlowResolver(),
            connector=self.refusingConnector,
        )
        relay.startService()
        self.enqueue("alice@example.test", ["bob@x.test"])
        stopped = relay.stopService()
        self.assertNoResult(stopped)
        self.clock.advance(STOP_GRACE)
        self.successResultOf(stopped)
        self.assertEqual(self.connects, [])

    def test_deletedEntryIsDropped(self) -> None:
        """
        An entry deleted with L{q.deleteEntry} while waiting is never
        tried again.
        """
        self.makeRelay(connector=self.refusingConnector, routes={"b.test": ("192.0.2.1", 25)}, retry_initial=60)
        entryId = self.enqueue("alice@example.test", ["bob@b.test"])
        self.assertEqual(len(self.connects), 1)
        q.deleteEntry(self.queueDir, entryId)
        self.clock.advance(60)
        self.assertEqual(len(self.connects), 1)
        self.assertFalse(os.path.exists(os.path.join(self.queueDir, "env", entryId + ".json")))

    def test_envelopeWithoutMessageIsDropped(self) -> None:
        """
        An envelope whose message is gone (an update that raced with a
        delete) is removed, not retried until it expires.
        """
        self.makeRelay(connector=self.refusingConnector, routes={"b.test": ("192.0.2.1", 25)}, retry_initial=60)
        entryId = self.enqueue("alice@example.test", ["bob@b.test"])
        os.unlink(os.path.join(self.queueDir, "msg", entryId))
        self.clock.advance(60)
        self.assertEqual(len(self.connects), 1)
        self.assertEqual(self.queued(), [])
        self.assertEqual(self.injected, [])

    def test_stopService(self) -> None:
        """
        A stopped relay schedules nothing more; the queue keeps the message.
        """
        relay = self.makeRelay(connector=self.refusingConnector, routes={"b.test": ("192.0.2.1", 25)}, retry_initial=60)
        self.enqueue("alice@example.test", ["bob@b.test"])
        self.successResultOf(relay.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.enqueue("alice@example.test", ["carl@b.test"])
        self.assertEqual(len(self.connects), 1)
        self.assertEqual(len(self.queued()), 2)

    def test_startDeliversWhatIsQueued(self) -> None:
        """
        Messages queued before the relay starts are tried when it does, and
        a flush requested while it was down is honoured.
        """
        self.enqueue("alice@example.test", ["bob@b.test"])
        q.requestFlush(self.queueDir)
        self.makeRelay(connector=self.refusingConnector, routes={"b.test": ("192.0.2.1", 25)})
        self.clock.advance(0)
        self.assertEqual(len(self.connects), 1)
        self.assertFalse(os.path.exists(os.path.join(self.queueDir, "flush")))


# --- next hops -----------------------------------------------------------------


class FakeResolver:
    def __init__(self, answers: Any = None, error: Optional[Exception] = None) -> None:
        self.answers = answers or []
        self.error = error
        self.asked: List[str] = []

    def lookupMailExchange(self, name: str, timeout: Any = None) -> defer.Deferred:
        self.asked.append(name)
        if self.error is not None:
            return defer.fail(self.error)
        return defer.succeed((self.answers, [], []))


def mx(preference: int, name: str) -> dns.RRHeader:
    return dns.RRHeader(b"x.test", dns.MX, payload=dns.Record_MX(preference, name.encode()))


class NextHopTests(unittest.TestCase):
    def relay(self, resolver: Any = None, **settings: Any) -> RelayService:
        queue = q.DiskQueue(self.mktemp(), runSynchronously, Clock(), "mx.example.test")
        return RelayService(
            queue, RelaySettings(**settings), "mx.example.test", Clock(), lambda *a: None, resolver=resolver,
            rng=random.Random(4),
        )

    def test_mxPreferenceOrder(self) -> None:
        """
        RFC 5321 §5.1: MX hosts are tried lowest preference first.
        """
        resolver = FakeResolver(
            [mx(20, "mx2.x.test"), mx(10, "mx1.x.test"), mx(30, "mx3.x.test"), dns.RRHeader(b"x.test", dns.CNAME)]
        )
        hops = self.successResultOf(self.relay(resolver).nextHops("x.test"))
        self.assertEqual(hops, [("mx1.x.test", 25), ("mx2.x.test", 25), ("mx3.x.test", 25)])
        self.assertEqual(resolver.asked, ["x.test"])

    def test_equalPreferenceShuffled(self) -> None:
        """
        Hosts of equal preference come in random order, after better ones.
        """
        records = [dns.Record_MX(10, b"a.test"), dns.Record_MX(20, b"b.test"), dns.Record_MX(20, b"c.test"), dns.Record_MX(20, b"d.test")]
        orders = {tuple(orderExchanges(records, random.Random(seed))) for seed in range(30)}
        self.assertTrue(all(order[0] == "a.test" for order in orders))
        self.assertGreater(len(orders), 1)

    def test_ourselvesAsMX(self) -> None:
        """
        RFC 5321 §5.1: when we are one of the MX hosts, only better ones are
        tried; when none is better, the mail would loop: 5.4.6.
        """
        resolver = FakeResolver([mx(10, "backup.x.test"), mx(20, "MX.example.test"), mx(30, "worse.x.test")])
        hops = self.successResultOf(self.relay(resolver).nextHops("x.test"))
        self.assertEqual(hops, [("backup.x.test", 25)])
        resolver = FakeResolver([mx(10, "mx.example.test"), mx(20, "worse.x.test")])
        failure = self.failureResultOf(self.relay(resolver).nextHops("x.test"), RoutingError)
        self.assertTrue(failure.value.permanent)
        self.assertIn("5.4.6", failure.value.reply)

    def test_noMXFallsBackToDomain(self) -> None:
        """
        With no MX records the domain itself (its A/AAAA records) is the
        host.
        """
        hops = self.successResultOf(self.relay(FakeResolver([])).nextHops("x.test"))
        self.assertEqual(hops, [("x.test", 25)])

    def test_nullMX(self) -> None:
        """
        RFC 7505: a null MX is a permanent failure, 5.1.10.
        """
        failure = self.failureResultOf(self.relay(FakeResolver([mx(0, "")])).nextHops("x.test"), RoutingError)
        self.assertTrue(failure.value.permanent)
        self.assertIn("5.1.10", failure.value.reply)

    def test_nxdomain(self) -> None:
        failure = self.failureResultOf(
            self.relay(FakeResolver(error=dnserror.DNSNameError())).nextHops("x.test"), RoutingError
        )
        self.assertTrue(failure.value.permanent)
        self.assertIn("5.1.2", failure.value.reply)

    def test_dnsTimeoutIsTemporary(self) -> None:
        from twisted.internet.defer import TimeoutError

        failure = self.failureResultOf(self.relay(FakeResolver(error=TimeoutError())).nextHops("x.test"), RoutingError)
        self.assertFalse(failure.value.permanent)
        self.assertIn("4.4.3", failure.value.reply)

    def test_routesThenSmarthostThenMX(self) -> None:
        resolver = FakeResolver([mx(10, "mx.x.test")])
        relay = self.relay(resolver, routes={"b.test": ("127.0.0.1", 2526)}, smarthost=("smart.test", 587))
        self.assertEqual(self.successResultOf(relay.nextHops("b.test")), [("127.0.0.1", 2526)])
        self.assertEqual(self.successResultOf(relay.nextHops("x.test")), [("smart.test", 587)])
        self.assertEqual(resolver.asked, [])

    def test_nullMXBounces(self) -> None:
        """
        A recipient whose domain has a null MX is bounced without any
        connection.
        """
        clock = Clock()
        clock.advance(START)
        queue = q.DiskQueue(self.mktemp(), runSynchronously, clock, "mx.example.test")
        injected: List[RecordingReceiver] = []

        def inject(returnPath: str, recipients: List[str]) -> RecordingReceiver:
            injected.append(RecordingReceiver(returnPath, recipients))
            return injected[-1]

        connects: List[Any] = []
        relay = RelayService(
            queue, RelaySettings(), "mx.example.test", clock, inject, resolver=FakeResolver([mx(0, ".")]),
            connector=lambda *a: connects.append(a),
        )
        relay.startService()
        receiver = queue.receive("alice@example.test", ["bob@x.test"])
        receiver.write(MESSAGE)
        self.successResultOf(receiver.finish())
        clock.advance(0)
        self.assertEqual(connects, [])
        block = email.message_from_bytes(injected[0].data).get_payload()[1].get_payload()[1]
        self.assertEqual(block["Status"], "5.1.10")
        self.assertEqual(q.listEntries(queue.queueDir), [])


# --- the client on a StringTransport ---------------------------------------------


class ClientTests(unittest.TestCase):
    def client(self, **kwargs: Any) -> Any:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(kwargs.pop("message", MESSAGE))
        message = open(path, "rb")
        self.addCleanup(message.close)
        job = Job(
            heloName="mx.example.test",
            sender=kwargs.pop("sender", "alice@example.test"),
            recipients=kwargs.pop("recipients", ["bob@b.test"]),
            message=message,
            host="hop.test",
            **kwargs,
        )
        client = RelayClient(job, Clock(), runSynchronously)
        transport = StringTransport()
        client.makeConnection(transport)
        return client, transport

    def test_dotStuff(self) -> None:
        """
        RFC 5321 §4.5.2, across chunk boundaries too.
        """
        self.assertEqual(dotStuff(b".a\r\n.b\r\nc.\r\n", b"\r\n"), b"..a\r\n..b\r\nc.\r\n")
        self.assertEqual(dotStuff(b".x", b"\r\n"), b"..x")
        self.assertEqual(dotStuff(b"\n.x", b"a\r"), b"\n..x")
        self.assertEqual(dotStuff(b".x", b"a\r"), b".x")

    def encodeInPieces(self, data: bytes, sizes: List[int]) -> bytes:
        encoder = DataEncoder()
        out = []
        while data:
            size = sizes[len(out) % len(sizes)]
            out.append(encoder.encode(data[:size]))
            data = data[size:]
        out.append(encoder.finish())
        return b"".join(out)

    def test_dataEncoder(self) -> None:
        """
        Line ends become CRLF, leading periods are doubled, and the data
        ends with CRLF . CRLF, however the message is cut into chunks.
        """
        message = b"Subject: x\r\n\r\n.top\r\nbare\nlf\rcr\r\n..two\r\nend"
        expected = b"Subject: x\r\n\r\n..top\r\nbare\r\nlf\r\ncr\r\n...two\r\nend\r\n.\r\n"
        for sizes in ([len(message)], [1], [2, 3], [5, 1, 7], [13]):
            self.assertEqual(self.encodeInPieces(message, sizes), expected, sizes)
        self.assertEqual(self.encodeInPieces(b"a\r\n", [1]), b"a\r\n.\r\n")
        self.assertEqual(DataEncoder().finish(), b".\r\n")

    def test_smugglingNeutralised(self) -> None:
        """
        SMTP smuggling (CVE-2023-51764 and friends): a bare-LF "end of data"
        inside a stored message goes out as an ordinary stuffed line, so no
        server can see a second message in it.
        """
        message = b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<evil@x.test>\r\n"
        encoded = self.encodeInPieces(message, [3])
        self.assertEqual(encoded.count(b"\r\n.\r\n"), 1)
        self.assertTrue(encoded.endswith(b"\r\n.\r\n"))
        self.assertIn(b"hi\r\n..\r\nMAIL", encoded)
        self.assertNotIn(b"\n.\n", encoded)

    def test_multilineRepliesAndHELOFallback(self) -> None:
        """
        A server that refuses EHLO gets HELO, and no extensions are used.
        """
        client, transport = self.client()
        client.dataReceived(b"220-hello\r\n220 there\r\n")
        self.assertEqual(transport.value(), b"EHLO mx.example.test\r\n")
        transport.clear()
        client.dataReceived(b"502 5.5.1 no EHLO\r\n")
        self.assertEqual(transport.value(), b"HELO mx.example.test\r\n")
        transport.clear()
        client.dataReceived(b"250 hi\r\n")
        self.assertEqual(transport.value(), b"MAIL FROM:<alice@example.test>\r\n")

    def test_timeout(self) -> None:
        """
        No greeting within the RFC 5321 §4.5.3.2 time-out: the connection is
        aborted and the host failed temporarily.
        """
        client, transport = self.client()
        client.clock.advance(_relayclient.TIMEOUT_GREETING)
        self.assertTrue(transport.disconnecting or transport.disconnected)
        failure = self.failureResultOf(client.result, _relayclient.HostFailure)
        self.assertIn("4.4.2 timed out", failure.value.reply)

    def test_startTLSInjection(self) -> None:
        """
        Lines that arrive in the same read as the STARTTLS 220 are thrown
        away (RFC 3207 §5, CVE-2011-0411-style command injection).
        """
        client, transport = self.client(tls=object())
        started: List[Any] = []
        transport.startTLS = lambda options: started.append(options)
        client.dataReceived(b"220 hi\r\n")
        transport.clear()
        client.dataReceived(b"250-hi\r\n250 STARTTLS\r\n")
        self.assertEqual(transport.value(), b"STARTTLS\r\n")
        transport.clear()
        client.dataReceived(b"220 go\r\n250-injected\r\n250 AUTH PLAIN\r\n")
        self.assertEqual(len(started), 1)
        self.assertEqual(transport.value(), b"EHLO mx.example.test\r\n")
        transport.clear()
        client.dataReceived(b"250-after tls\r\n250 8BITMIME\r\n")
        self.assertEqual(client.extensions, {"8BITMIME": ""})
        self.assertEqual(transport.value(), b"MAIL FROM:<alice@example.test>\r\n")

    def test_stalledDuringData(self) -> None:
        """
        RFC 5321 §4.5.3.2.6: a server that stops reading the data for three
        minutes is given up on; the recipient is deferred.
        """
        client, transport = self.client()
        client.dataReceived(b"220 hi\r\n250 hi\r\n250 ok\r\n250 ok\r\n")
        client.pauseProducing()
        client.dataReceived(b"354 go\r\n")
        self.assertNoResult(client.result)
        client.clock.advance(_relayclient.TIMEOUT_DATA_BLOCK)
        [outcome] = self.successResultOf(client.result)
        self.assertEqual(outcome.kind, "temporary")
        self.assertIn("timed out", outcome.reply)
        self.assertIn("during DATA", outcome.reply)

    def test_421AtEHLO(self) -> None:
        """
        A server closing down (421) is not an old server: no HELO, the host
        fails temporarily.
        """
        client, transport = self.client()
        client.dataReceived(b"220 hi\r\n421 4.3.2 going down\r\n")
        self.assertNotIn(b"HELO", transport.value())
        failure = self.failureResultOf(client.result, _relayclient.HostFailure)
        self.assertEqual(failure.value.reply, "421 4.3.2 going down")
        self.assertFalse(failure.value.permanent)

    def test_malformedReply(self) -> None:
        client, transport = self.client()
        client.dataReceived(b"hello there\r\n")
        failure = self.failureResultOf(client.result, _relayclient.HostFailure)
        self.assertIn("4.5.0", failure.value.reply)
        self.assertTrue(transport.disconnecting)

    def test_smtputf8Required(self) -> None:
        """
        RFC 6531 §3.2: non-ASCII addresses need a server with SMTPUTF8;
        without it the failure is permanent.
        """
        client, transport = self.client(recipients=["jos\u00e9@b.test"])
        client.dataReceived(b"220 hi\r\n250 hi\r\n")
        failure = self.failureResultOf(client.result, _relayclient.HostFailure)
        self.assertTrue(failure.value.permanent)
        self.assertIn("5.6.7", failure.value.reply)

    def test_eightBitAndSMTPUTF8(self) -> None:
        client, transport = self.client(recipients=["jos\u00e9@b.test"], eightBit=True)
        client.dataReceived(b"220 hi\r\n250-hi\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
        self.assertEqual(
            transport.value().split(b"\r\n")[-2],
            b"MAIL FROM:<alice@example.test> BODY=8BITMIME SMTPUTF8",
        )

    def test_messageWithoutFinalCRLF(self) -> None:
        """
        A message that does not end with CRLF gets one before the final dot.
        """
        client, transport = self.client(message=b"Subject: x\r\n\r\nno newline")
        client.dataReceived(b"220 hi\r\n250 hi\r\n250 ok\r\n250 ok\r\n")
        transport.clear()
        client.dataReceived(b"354 go\r\n")
        self.assertEqual(transport.value(), b"Subject: x\r\n\r\nno newline\r\n.\r\n")
        client.dataReceived(b"250 2.0.0 done\r\n")
        [outcome] = self.successResultOf(client.result)
        self.assertEqual((outcome.kind, outcome.reply), ("delivered", "250 2.0.0 done"))


class DefaultResolverTests(unittest.TestCase):
    def test_resolverUsesGivenReactor(self) -> None:
        """
        Without a resolver argument, MX look-ups go through a
        L{twisted.names.client.Resolver} on the service's reactor, not the
        global one.
        """
        from twisted.names import client

        clock = Clock()
        queue = q.DiskQueue(self.mktemp(), runSynchronously, clock, "mx.example.test")
        relay = RelayService(queue, RelaySettings(), "mx.example.test", clock, lambda *a: None)
        resolver = relay._getResolver()
        self.assertIsInstance(resolver, client.Resolver)
        self.assertIs(resolver._reactor, clock)
        self.assertIs(relay._getResolver(), resolver)


class OwnServerTests(RelayTestMixin, unittest.TestCase):
    """
    The relay against mailnet's own SMTP server (the MTA role) on a
    loopback socket, STARTTLS included.
    """

    @defer.inlineCallbacks
    def startOwnServer(self) -> Any:
        from mailnet.config import Limits
        from mailnet.smtp.server import SMTPFactory
        from mailnet.testing import FakeAuthenticator, FakeDeliveryAgent

        directory = self.mktemp()
        os.makedirs(directory)
        certPath, keyPath = makeCertificate(directory)
        with open(certPath) as c, open(keyPath) as k:
            tlsOptions = PrivateCertificate.loadPEM(c.read() + k.read()).options()
        delivery = FakeDeliveryAgent(localDomains=("b.test",), users=("bob@b.test", "carol@b.test"))
        factory = SMTPFactory(
            hostname="mx.b.test",
            role="mta",
            delivery=delivery,
            authenticator=FakeAuthenticator({}),
            limits=Limits(),
            tlsOptions=tlsOptions,
            clock=reactor,
        )
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return delivery, port.getHost().port

    @defer.inlineCallbacks
    def test_deliverOverSTARTTLS(self) -> Any:
        """
        Two recipients accepted, one refused (550 5.1.1 from the server):
        the accepted ones get the message, intact and over TLS; the sender
        gets a bounce for the other.
        """
        delivery, port = yield self.startOwnServer()
        message = MESSAGE + b".\r\n..\r\ncaf\xc3\xa9\r\n"
        relay = self.makeRelay(routes={"b.test": ("127.0.0.1", port)}, require_tls=True)
        self.enqueue("alice@example.test", ["bob@b.test", "nobody@b.test", "carol@b.test"], message=message)
        yield relay.whenIdle()
        [received] = delivery.messages
        self.assertEqual(received.returnPath, "alice@example.test")
        self.assertEqual(received.recipients, ["bob@b.test", "carol@b.test"])
        self.assertTrue(received.finished)
        self.assertTrue(received.data.endswith(message), received.data)
        self.assertIn(b"ESMTPS", received.data.split(message)[0])  # RFC 3848: TLS was used
        self.assertEqual(self.queued(), [])
        [bounce] = self.injected
        block = email.message_from_bytes(bounce.data).get_payload()[1].get_payload()[1]
        self.assertEqual(block["Final-Recipient"], "rfc822; nobody@b.test")
        self.assertEqual(block["Status"], "5.1.1")


class HostileReplyTests(RelayTestMixin, unittest.TestCase):
    """
    What a remote server says reaches logs, the queue (and so
    C{mailnet-admin queue list}) and bounces: never raw.
    """

    @defer.inlineCallbacks
    def test_controlCharactersEscaped(self) -> Any:
        server = yield self.startServer()
        server.dataReplies.append("451 4.3.0 \x1b]0;owned\x07\x1b[2J\rnot\x9bme")
        relay = self.makeRelay(routes={"b.test": ("127.0.0.1", server.port)})
        entryId = self.enqueue("alice@example.test", ["bob@b.test"])
        yield relay.whenIdle()
        lastError = self.envelope(entryId)["recipients"][0]["last_error"]
        self.assertEqual(lastError, "451 4.3.0 \\x1b]0;owned\\x07\\x1b[2J\\x0dnot\\x9bme")
        self.assertEqual(q.listEntries(self.queueDir)[0]["last_error"], lastError)

    def test_replyLength(self) -> None:
        reply = _relayclient.Reply(550, ("x" * 3000,) * 50)
        self.assertLess(len(str(reply)), _relayclient.MAX_REPLY_TEXT + 10)

    @defer.inlineCallbacks
    def test_loopBounceCarriesWholeHeader(self) -> Any:
        """
        A next hop that refuses a looping message (554 5.4.6): the bounce
        holds every original header field, whole, and its Diagnostic-Code
        is RFC 3464 text.
        """
        server = yield self.startServer()
        server.dataReplies.append("554 5.4.6 Too many hops (150 Received: header fields): mail loop? caf\u00e9")
        relay = self.makeRelay(routes={"b.test": ("127.0.0.1", server.port)})
        received = b"".join(b"Received: from hop%d.test\r\n\tby hop%d.test; Thu, 1 Jan 2026 00:00:00 +0000\r\n" % (i, i + 1) for i in range(150))
        self.enqueue("alice@example.test", ["bob@b.test"], received + b"Subject: loop\r\n\r\nbody\r\n")
        yield relay.whenIdle()
        [bounce] = self.injected
        self.assertEqual(bounce.returnPath, "")
        self.assertNotIn(b"=?", bounce.data)
        _, status, headers = email.message_from_bytes(bounce.data).get_payload()
        diagnostic = status.get_payload()[1]["Diagnostic-Code"]
        self.assertEqual(
            " ".join(diagnostic.split()),
            "smtp; 554 5.4.6 Too many hops (150 Received: header fields): mail loop? caf\\u00e9",
        )
        part = headers.get_payload()
        self.assertEqual(part.count("Received: from hop"), 150)
        self.assertTrue(part.rstrip("\r\n").endswith("Subject: loop"), part[-200:])
