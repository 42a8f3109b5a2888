"""
Tests for the relay client's PIPELINING, its 8BITMIME downgrade, and the
TLS details in the delivery log (L{mailnet.smtp._relayclient},
L{mailnet.smtp._eightbit}).
"""

import email
import email.policy
from typing import Any, List

from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from mailnet.smtp import _relayclient
from mailnet.smtp._eightbit import CannotConvert, toSevenBit
from tests import test_relay as relaytests

EIGHT_BIT = b"From: alice@example.test\r\nTo: bob@b.test\r\nSubject: caf\xc3\xa9?\r\n\r\n"


class ClientMixin:
    # The scripted-client helper of tests/test_relay.py, without its tests.
    client = relaytests.ClientTests.client


class PipeliningTests(ClientMixin, unittest.TestCase):
    def test_mailAndRcptsInOneWrite(self) -> None:
        """RFC 2920: with PIPELINING, MAIL and every RCPT go in one write; replies are read in order."""
        client, transport = self.client(recipients=["bob@b.test", "carol@b.test", "dan@b.test"])
        client.dataReceived(b"220 hi\r\n250-hi\r\n250 PIPELINING\r\n")
        self.assertEqual(
            transport.value().split(b"\r\n")[1:-1],
            [b"MAIL FROM:<alice@example.test>", b"RCPT TO:<bob@b.test>", b"RCPT TO:<carol@b.test>", b"RCPT TO:<dan@b.test>"],
        )
        transport.clear()
        client.dataReceived(b"250 ok\r\n250 ok\r\n550 5.1.1 no carol\r\n250 ok\r\n")
        self.assertEqual(transport.value(), b"DATA\r\n")
        client.dataReceived(b"354 go\r\n")
        client.dataReceived(b"250 2.0.0 done\r\n")
        outcomes = self.successResultOf(client.result)
        self.assertEqual([o.kind for o in outcomes], ["delivered", "permanent", "delivered"])
        self.assertEqual(outcomes[1].reply, "550 5.1.1 no carol")
        self.assertEqual(outcomes[0].tls, "no TLS")

    def test_withoutPipeliningOneByOne(self) -> None:
        client, transport = self.client(recipients=["bob@b.test", "carol@b.test"])
        client.dataReceived(b"220 hi\r\n250 hi\r\n")
        self.assertEqual(transport.value().split(b"\r\n")[-2], b"MAIL FROM:<alice@example.test>")
        transport.clear()
        client.dataReceived(b"250 ok\r\n")
        self.assertEqual(transport.value(), b"RCPT TO:<bob@b.test>\r\n")

    def test_pipelinedMailRefused(self) -> None:
        """A refused MAIL decides for the session; the 503s of the RCPTs are read, then QUIT."""
        client, transport = self.client(recipients=["bob@b.test", "carol@b.test"])
        client.dataReceived(b"220 hi\r\n250-hi\r\n250 PIPELINING\r\n")
        transport.clear()
        client.dataReceived(b"550 5.7.1 not you\r\n503 5.5.1 no MAIL\r\n")
        self.assertEqual(transport.value(), b"")
        client.dataReceived(b"503 5.5.1 no MAIL\r\n")
        failure = self.failureResultOf(client.result, _relayclient.HostFailure)
        self.assertEqual(failure.value.reply, "550 5.7.1 not you")
        self.assertTrue(failure.value.permanent)
        self.assertEqual(transport.value(), b"QUIT\r\n")


class DowngradeClientTests(ClientMixin, unittest.TestCase):
    def test_quotedPrintableWithout8BITMIME(self) -> None:
        """
        RFC 6152 §3: an 8-bit body goes to a next hop without 8BITMIME as
        quoted-printable, without BODY=8BITMIME, its SIZE the converted one.
        """
        message = b"From: alice@example.test\r\nTo: bob@b.test\r\n\r\ncaf\xc3\xa9\r\n"
        client, transport = self.client(message=message, eightBit=True)
        client.dataReceived(b"220 hi\r\n250-hi\r\n250 SIZE 1000\r\n")
        converted = toSevenBit(message)
        self.assertEqual(transport.value().split(b"\r\n")[-2], b"MAIL FROM:<alice@example.test> SIZE=%d" % (len(converted),))
        client.dataReceived(b"250 ok\r\n250 ok\r\n")
        transport.clear()
        client.dataReceived(b"354 go\r\n")
        sent = transport.value()
        self.assertTrue(sent.isascii())
        self.assertIn(b"Content-Transfer-Encoding: quoted-printable\r\n", sent)
        self.assertIn(b"\r\n\r\ncaf=C3=A9\r\n.\r\n", sent)

    def test_8BITMIMEKeepsTheMessage(self) -> None:
        message = b"From: alice@example.test\r\n\r\ncaf\xc3\xa9\r\n"
        client, transport = self.client(message=message, eightBit=True)
        client.dataReceived(b"220 hi\r\n250-hi\r\n250 8BITMIME\r\n250 ok\r\n250 ok\r\n")
        transport.clear()
        client.dataReceived(b"354 go\r\n")
        self.assertEqual(transport.value(), message + b".\r\n")

    def test_unconvertibleBounces(self) -> None:
        """8-bit header fields cannot be encoded: a permanent 5.6.3 failure (RFC 3463)."""
        client, transport = self.client(message=EIGHT_BIT + b"hi\r\n", eightBit=True)
        client.dataReceived(b"220 hi\r\n250 hi\r\n")
        failure = self.failureResultOf(client.result, _relayclient.HostFailure)
        self.assertTrue(failure.value.permanent)
        self.assertTrue(failure.value.reply.startswith("554 5.6.3 hop.test does not take 8-bit mail"), failure.value.reply)


class ConversionTests(unittest.SynchronousTestCase):
    def parse(self, data: bytes) -> Any:
        return email.message_from_bytes(data, policy=email.policy.default)

    def test_asciiUnchanged(self) -> None:
        message = b"Subject: x\r\n\r\nplain\r\n"
        self.assertIs(toSevenBit(message), message)

    def test_plainMessage(self) -> None:
        """No MIME fields: MIME-Version, a text/plain type with its charset, and quoted-printable are added."""
        converted = toSevenBit(b"Subject: x\r\n\r\nh\xc3\xa9llo  \r\n" + b"y" * 200 + b"\r\n")
        self.assertTrue(converted.isascii())
        self.assertTrue(all(len(line) <= 78 for line in converted.split(b"\r\n")))
        parsed = self.parse(converted)
        self.assertEqual((parsed.get_content_type(), parsed.get_content_charset()), ("text/plain", "utf-8"))
        self.assertEqual(parsed.get_payload(decode=True), b"h\xc3\xa9llo  \r\n" + b"y" * 200 + b"\r\n")

    def test_multipart(self) -> None:
        """
        Each 8-bit leaf is encoded (text: quoted-printable, others: base64),
        an embedded message is converted as a message, and the structure
        and the ASCII parts stay byte for byte.
        """
        message = (
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble\r\n"
            b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nZ\xc3\xbcrich\r\n"
            b"--b1\r\nContent-Type: text/plain\r\n\r\nascii stays\r\n"
            b"--b1\r\nContent-Type: application/octet-stream\r\n\r\n\x01\xff\x80\r\n"
            b"--b1\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\nSubject: in\r\n\r\ninner \xc3\xa9\r\n"
            b"--b1--\r\nepilogue\r\n"
        )
        converted = toSevenBit(message)
        self.assertTrue(converted.isascii())
        self.assertIn(b"--b1\r\nContent-Type: text/plain\r\n\r\nascii stays\r\n--b1\r\n", converted)
        parts = [p for p in self.parse(converted).walk() if not p.is_multipart()]
        payloads = [p.get_payload(decode=True) for p in parts if p.get_content_type() != "message/rfc822"]
        self.assertEqual(payloads, [b"Z\xc3\xbcrich", b"ascii stays", b"\x01\xff\x80", b"inner \xc3\xa9"])
        self.assertIn(b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n", converted)

    def test_cannotConvert(self) -> None:
        for message in [
            EIGHT_BIT + b"x\r\n",  # RFC 6532 header fields
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\npre \xc3\xa9\r\n--b\r\n\r\nx\r\n--b--\r\n",
            b"Content-Type: message/global\r\n\r\nSubject: \xc3\xa9\r\n\r\nx\r\n",
            b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n\xc3\xa9\r\n",
            b"Content-Type: multipart/mixed\r\n\r\n\xc3\xa9\r\n",
        ]:
            self.assertRaises(CannotConvert, toSevenBit, message)

    def test_depthBounded(self) -> None:
        message = b"x \xc3\xa9\r\n"
        for _ in range(30):
            message = b"Content-Type: message/rfc822\r\n\r\n" + message
        self.assertRaises(CannotConvert, toSevenBit, message)


class TLSLogTests(relaytests.RelayTestMixin, unittest.TestCase):
    startOwnServer = relaytests.OwnServerTests.startOwnServer

    @defer.inlineCallbacks
    def test_deliveryLogNamesTLS(self) -> Any:
        """The log line of each delivery names the TLS version and cipher."""
        events: List[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        delivery, port = yield self.startOwnServer()
        relay = self.makeRelay(routes={"b.test": ("127.0.0.1", port)}, require_tls=True)
        self.enqueue("alice@example.test", ["bob@b.test"])
        yield relay.whenIdle()
        [line] = [e for e in events if "delivered via" in e.get("log_format", "")]
        self.assertRegex(line["tls"], r"^TLSv1\.[23] [A-Z0-9_-]+$")


class RSETServer(relaytests.ScriptedServer):
    """The scripted server, with RSET (RFC 5321 §4.1.1.5)."""

    def lineReceived(self, line: bytes) -> None:
        if line.upper() == b"RSET" and not self.inData:
            self.f.commands.append(line)
            self.mailFrom, self.rcpts = None, []
            self.reply("250 2.0.0 ok")
            return
        relaytests.ScriptedServer.lineReceived(self, line)


class SharedConnectionTests(relaytests.RelayTestMixin, unittest.TestCase):
    """Queued messages for one destination share a connection."""

    @defer.inlineCallbacks
    def startRSETServer(self) -> Any:
        server = yield self.startServer()
        server.protocol = RSETServer
        return server

    @defer.inlineCallbacks
    def test_queuedMessagesShareOneConnection(self) -> Any:
        """
        Five messages for b.test with one connection allowed: one
        connection, five transactions, each message recorded and removed.
        """
        server = yield self.startServer()
        relay = self.makeRelay(routes={"b.test": ("127.0.0.1", server.port)}, max_connections_per_domain=1)
        ids = [self.enqueue("alice@example.test", ["bob%d@b.test" % i]) for i in range(5)]
        yield relay.whenIdle()
        self.assertEqual(server.connections, 1)
        self.assertEqual(sorted(t["to"][0] for t in server.transactions), ["bob%d@b.test" % i for i in range(5)])
        self.assertEqual(self.queued(), [])
        self.assertEqual(server.commands.count(b"EHLO mx.example.test"), 1)
        self.assertEqual(len(ids), 5)

    @defer.inlineCallbacks
    def test_refusedRecipientOnSharedConnection(self) -> Any:
        """A message carried along keeps its own results: its refused recipient bounces, the others go."""
        server = yield self.startRSETServer()
        server.rcptReplies["nobody@b.test"] = "550 5.1.1 no such user"
        relay = self.makeRelay(routes={"b.test": ("127.0.0.1", server.port)}, max_connections_per_domain=1)
        self.enqueue("alice@example.test", ["bob@b.test"])
        self.enqueue("carol@example.test", ["nobody@b.test"])
        self.enqueue("dan@example.test", ["eve@b.test"])
        yield relay.whenIdle()
        self.assertEqual(server.connections, 1)
        # The second message's transaction got no DATA: RSET before the third.
        self.assertIn(b"RSET", server.commands)
        self.assertEqual([t["to"] for t in server.transactions], [["bob@b.test"], ["eve@b.test"]])
        [bounce] = self.injected
        self.assertEqual(bounce.recipients, ["carol@example.test"])
        self.assertEqual(self.queued(), [])

    @defer.inlineCallbacks
    def test_refusedRSETMeansANewConnection(self) -> Any:
        """A server that refuses RSET gets the next message on a new connection."""
        server = yield self.startServer()  # answers RSET with 500
        server.rcptReplies["nobody@b.test"] = "550 5.1.1 no such user"
        relay = self.makeRelay(routes={"b.test": ("127.0.0.1", server.port)}, max_connections_per_domain=1)
        self.enqueue("alice@example.test", ["bob@b.test"])
        self.enqueue("carol@example.test", ["nobody@b.test"])
        self.enqueue("dan@example.test", ["eve@b.test"])
        yield relay.whenIdle()
        self.assertEqual(server.connections, 2)
        self.assertEqual([t["to"] for t in server.transactions], [["bob@b.test"], ["eve@b.test"]])
        self.assertEqual(self.queued(), [])

    @defer.inlineCallbacks
    def test_brokenConnectionMessagesGoOnTheirOwn(self) -> Any:
        """
        The connection drops during the second message: that one is retried
        later (it had answers), the rest go on a new connection at once.
        """
        server = yield self.startServer()
        relay = self.makeRelay(routes={"b.test": ("127.0.0.1", server.port)}, max_connections_per_domain=1, retry_initial=60)
        server.dropAfterDataBytes = len(relaytests.MESSAGE) + 10
        for i in range(4):
            self.enqueue("alice@example.test", ["bob%d@b.test" % i])
        yield relay.whenIdle()
        self.assertEqual(server.connections, 2)
        self.assertEqual(len(server.transactions), 3)
        self.assertEqual(len(self.queued()), 1)
        self.clock.advance(60)
        yield relay.whenIdle()
        self.assertEqual(len(server.transactions), 4)
        self.assertEqual(self.queued(), [])


class MXFailureTests(unittest.SynchronousTestCase):
    def test_serverFailureIsTemporary(self) -> None:
        """SERVFAIL for the MX look-up is DNS trouble (retried), not a domain that does not exist (bounced)."""
        from twisted.names import error as dnserror

        from mailnet.smtp.relay import RoutingError

        relay = relaytests.NextHopTests.relay(self, relaytests.FakeResolver(error=dnserror.DNSServerError()))  # type: ignore[arg-type]
        failure = self.failureResultOf(relay.nextHops("x.test"), RoutingError)
        self.assertFalse(failure.value.permanent)
