# -*- test-case-name: tests.test_smtp_server -*-
"""
Tests for L{mailnet.smtp.server}: one command at a time on a
L{StringTransport}, then a few real connections (STARTTLS and implicit TLS)
from C{smtplib} on 127.0.0.1.
"""

import base64
import os
import random
import re
import smtplib
import ssl
from typing import Dict, List, Optional

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from mailnet.config import Limits
from mailnet.errors import LoginBusy, SMTPReply
from mailnet.interfaces import IMessageReceiver
from mailnet.smtp._data import DotDecoder, MessageChecker
from mailnet.smtp.server import INPUT_HIGH_WATER, SMTPFactory, SMTPServer
from mailnet.testing import (
    FakeAuthenticator,
    FakeDeliveryAgent,
    FakeSender,
    makeCertificate,
)
from mailnet.tls import serverContextFactory

PEER = "192.0.2.7"
HOST = "mx.example.test"


class TLSStringTransport(StringTransport):
    """A L{StringTransport} that records C{startTLS} and C{setTcpNoDelay}."""

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", PEER, 40000))
        self.tlsOptions: object = None
        self.noDelay: Optional[bool] = None

    def startTLS(self, options: object) -> None:
        self.tlsOptions = options

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = enabled


@implementer(IMessageReceiver)
class SlowReceiver:
    """A receiver whose C{finish} waits until the test fires it."""

    def __init__(self) -> None:
        self.chunks: List[bytes] = []
        self.finishing: Optional[Deferred] = None
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def finish(self) -> Deferred:
        self.finishing = Deferred()
        return self.finishing

    def abort(self) -> None:
        self.aborted = True


class Harness:
    """
    One server protocol on a string transport, with the public fakes.
    """

    def __init__(
        self,
        role: str = "mta",
        limits: Optional[Limits] = None,
        tls: bool = False,
        allowPlaintextAuth: bool = False,
        greet: bool = True,
    ) -> None:
        self.clock = Clock()
        self.delivery = FakeDeliveryAgent()
        self.authenticator = FakeAuthenticator({"alice@example.test": "secret", "bob@example.test": "hunter2"})
        self.tlsOptions = object() if tls else None
        self.factory = SMTPFactory(
            hostname=HOST,
            role=role,
            delivery=self.delivery,
            authenticator=self.authenticator,
            limits=limits or Limits(),
            tlsOptions=self.tlsOptions,
            allowPlaintextAuth=allowPlaintextAuth,
            clock=self.clock,
        )
        self.transport = TLSStringTransport()
        self.protocol: SMTPServer = self.factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)
        self.greeting = self.take()

    def take(self) -> List[str]:
        """The reply lines written since last asked."""
        out = self.transport.value().decode("utf-8")
        self.transport.clear()
        assert out == "" or out.endswith("\r\n"), out
        return out.split("\r\n")[:-1]

    def send(self, data: bytes) -> List[str]:
        self.protocol.dataReceived(data)
        return self.take()

    def command(self, line: str) -> List[str]:
        return self.send(line.encode("utf-8") + b"\r\n")

    def ehlo(self) -> List[str]:
        return self.command("EHLO client.example.org")

    def login(self, user: str = "alice@example.test", password: str = "secret") -> List[str]:
        token = base64.b64encode(("\0%s\0%s" % (user, password)).encode()).decode()
        return self.command("AUTH PLAIN " + token)

    def envelope(self, sender: str = "someone@remote.test", *recipients: str) -> None:
        assert self.command("MAIL FROM:<%s>" % (sender,))[0].startswith("250"), sender
        for r in recipients or ("alice@example.test",):
            assert self.command("RCPT TO:<%s>" % (r,))[0].startswith("250"), r

    def disconnect(self) -> None:
        self.protocol.connectionLost(None)


def plain(user: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(("%s\0%s\0%s" % (authzid, user, password)).encode()).decode()


class ConnectionTests(SynchronousTestCase):
    """Greeting, EHLO/HELO, and the simple commands."""

    def test_greeting(self) -> None:
        """RFC 5321 §4.2: C{220 <hostname> ESMTP mailnet}, no enhanced code."""
        self.assertEqual(Harness().greeting, ["220 mx.example.test ESMTP mailnet"])

    def test_tcpNoDelay(self) -> None:
        self.assertIs(Harness().transport.noDelay, True)

    def test_ehloMTAWithoutTLS(self) -> None:
        """Without TLS options nor plaintext AUTH, neither STARTTLS nor AUTH is offered."""
        self.assertEqual(
            Harness().ehlo(),
            [
                "250-mx.example.test Hello client.example.org [192.0.2.7]",
                "250-PIPELINING",
                "250-SIZE 26214400",
                "250-8BITMIME",
                "250-ENHANCEDSTATUSCODES",
                "250-SMTPUTF8",
                "250 CHUNKING",
            ],
        )

    def test_ehloWithTLSOptions(self) -> None:
        """RFC 3207: STARTTLS offered when there are TLS options; AUTH waits for TLS."""
        lines = Harness(tls=True).ehlo()
        self.assertEqual(lines[-1], "250 STARTTLS")
        self.assertFalse([l for l in lines if "AUTH" in l])

    def test_ehloPlaintextAuthAllowed(self) -> None:
        self.assertEqual(Harness(allowPlaintextAuth=True).ehlo()[-1], "250 AUTH PLAIN LOGIN")

    def test_ehloSMTPS(self) -> None:
        """On implicit TLS: AUTH offered, STARTTLS not."""
        lines = Harness(role="smtps", tls=True).ehlo()
        self.assertEqual(lines[-1], "250 AUTH PLAIN LOGIN")
        self.assertNotIn("250-STARTTLS", lines)

    def test_ehloSize(self) -> None:
        self.assertIn("250-SIZE 1000", Harness(limits=Limits(max_message_size=1000)).ehlo())

    def test_ehloAddressLiteral(self) -> None:
        h = Harness()
        self.assertTrue(h.command("EHLO [192.0.2.1]")[0].startswith("250-"))
        self.assertTrue(h.command("EHLO [IPv6:2001:db8::1]")[0].startswith("250-"))

    def test_ehloBadName(self) -> None:
        h = Harness()
        for bad in ("EHLO", "EHLO bad_name!", "EHLO [300.1.1.1]", "HELO -x.test"):
            self.assertEqual(h.command(bad), ["501 5.5.4 Syntax: EHLO <domain or address literal>"], bad)

    def test_helo(self) -> None:
        self.assertEqual(Harness().command("HELO client.example.org"), ["250 mx.example.test Hello client.example.org [192.0.2.7]"])

    def test_heloNoParameters(self) -> None:
        """After HELO there are no extensions: ESMTP parameters are unknown."""
        h = Harness()
        h.command("HELO client.example.org")
        self.assertEqual(h.command("MAIL FROM:<a@remote.test> SIZE=10"), ["555 5.5.4 Unsupported parameter SIZE"])

    def test_noop(self) -> None:
        self.assertEqual(Harness().command("NOOP whatever"), ["250 2.0.0 Ok"])

    def test_rset(self) -> None:
        h = Harness()
        h.ehlo()
        h.envelope()
        self.assertEqual(h.command("RSET"), ["250 2.0.0 Ok"])
        self.assertEqual(h.command("RCPT TO:<alice@example.test>"), ["503 5.5.1 Need MAIL before RCPT"])

    def test_rsetArgument(self) -> None:
        self.assertEqual(Harness().command("RSET x"), ["501 5.5.4 RSET takes no arguments"])

    def test_vrfy(self) -> None:
        """RFC 5321 §3.5.3: 252, revealing nothing."""
        self.assertEqual(
            Harness().command("VRFY alice"), ["252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"]
        )

    def test_expn(self) -> None:
        self.assertEqual(Harness().command("EXPN staff"), ["502 5.5.1 EXPN not available"])

    def test_help(self) -> None:
        lines = Harness().command("HELP")
        self.assertTrue(lines[0].startswith("214-2.0.0 Commands: EHLO"))
        self.assertTrue(lines[-1].startswith("214 2.0.0 "))

    def test_quit(self) -> None:
        h = Harness()
        self.assertEqual(h.command("QUIT"), ["221 2.0.0 mx.example.test closing connection"])
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.command("NOOP"), [])

    def test_unknownCommand(self) -> None:
        self.assertEqual(Harness().command("FROB"), ["500 5.5.1 Command unrecognized"])

    def test_lowerCaseCommands(self) -> None:
        h = Harness()
        self.assertTrue(h.command("ehlo client.example.org")[0].startswith("250-"))
        self.assertEqual(h.command("mail from:<a@remote.test>"), ["250 2.1.0 Sender <a@remote.test> ok"])

    def test_bareLFCommands(self) -> None:
        """Commands typed with LF only (openssl s_client without -crlf) work."""
        h = Harness()
        self.assertEqual(h.send(b"NOOP\nNOOP\n"), ["250 2.0.0 Ok", "250 2.0.0 Ok"])

    def test_maxConnections(self) -> None:
        """The connection over the limit gets 421 4.7.0 and is closed."""
        h = Harness(limits=Limits(max_connections=1))
        second = TLSStringTransport()
        protocol = h.factory.buildProtocol(None)
        protocol.makeConnection(second)
        self.assertEqual(second.value(), b"421 4.7.0 mx.example.test too many connections, try again later\r\n")
        self.assertTrue(second.disconnecting)
        protocol.connectionLost(None)
        self.assertEqual(h.factory.connections, 1)
        h.disconnect()
        self.assertEqual(h.factory.connections, 0)

    def test_badRole(self) -> None:
        self.assertRaises(
            ValueError,
            SMTPFactory,
            hostname=HOST,
            role="pop3",
            delivery=FakeDeliveryAgent(),
            authenticator=FakeAuthenticator({}),
            limits=Limits(),
        )


class TimeoutTests(SynchronousTestCase):
    def test_idleTimeout(self) -> None:
        """No bytes for idle_timeout: 421 4.4.2 and close."""
        h = Harness(limits=Limits(idle_timeout=30))
        h.clock.advance(29)
        h.command("NOOP")
        h.clock.advance(29)
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(1)
        self.assertEqual(h.take(), ["421 4.4.2 mx.example.test idle timeout"])
        self.assertTrue(h.transport.disconnecting)

    def test_idleTimeoutAbortsMessage(self) -> None:
        h = Harness(limits=Limits(idle_timeout=30))
        h.ehlo()
        h.envelope()
        h.command("DATA")
        h.send(b"Subject: x\r\n")
        h.clock.advance(30)
        self.assertTrue(h.delivery.messages[0].aborted)

    def test_timersCancelledOnClose(self) -> None:
        h = Harness()
        h.send(b"NOO")
        h.disconnect()
        self.assertEqual(h.clock.getDelayedCalls(), [])


class TransactionTests(SynchronousTestCase):
    """MAIL, RCPT, DATA, BDAT and their order."""

    def setUp(self) -> None:
        self.h = Harness()
        self.h.ehlo()

    def test_mailBeforeEhlo(self) -> None:
        self.assertEqual(Harness().command("MAIL FROM:<a@remote.test>"), ["503 5.5.1 Send EHLO or HELO first"])

    def test_mail(self) -> None:
        self.assertEqual(self.h.command("MAIL FROM:<A@Remote.test>"), ["250 2.1.0 Sender <a@remote.test> ok"])

    def test_mailSpaceAfterColon(self) -> None:
        self.assertEqual(self.h.command("MAIL FROM: <a@remote.test>"), ["250 2.1.0 Sender <a@remote.test> ok"])

    def test_nullSender(self) -> None:
        self.assertEqual(self.h.command("MAIL FROM:<>"), ["250 2.1.0 Sender <> ok"])

    def test_sourceRouteIgnored(self) -> None:
        self.assertEqual(self.h.command("MAIL FROM:<@relay.test:a@remote.test>"), ["250 2.1.0 Sender <a@remote.test> ok"])

    def test_secondMail(self) -> None:
        self.h.command("MAIL FROM:<a@remote.test>")
        self.assertEqual(self.h.command("MAIL FROM:<a@remote.test>"), ["503 5.5.1 Sender already given"])

    def test_mailSyntax(self) -> None:
        self.assertEqual(self.h.command("MAIL TO:<a@remote.test>"), ["501 5.5.4 Syntax: FROM:<address>"])
        self.assertEqual(self.h.command("MAIL FROM:a@remote.test"), ["501 5.1.7 Address must be in angle brackets"])
        self.assertEqual(self.h.command("MAIL FROM:<a@remote.test"), ["501 5.1.7 Missing > after the address"])

    def test_mailBadAddress(self) -> None:
        self.assertEqual(
            self.h.command("MAIL FROM:<a..b@remote.test>"), ["501 5.1.7 Bad address syntax: the local part is not a dot-atom"]
        )

    def test_pathTooLong(self) -> None:
        """RFC 5321 §4.5.3.1.3: 256 octets for a path."""
        path = "<%s@%s.test>" % ("a" * 64, ".".join(["b" * 60] * 4))
        self.assertGreater(len(path), 256)
        self.assertEqual(self.h.command("MAIL FROM:%s" % (path,)), ["501 5.1.3 Path longer than 256 octets"])
        self.h.command("MAIL FROM:<a@remote.test>")
        self.assertEqual(self.h.command("RCPT TO:%s" % (path,)), ["501 5.1.3 Path longer than 256 octets"])

    def test_sizeParameter(self) -> None:
        """RFC 1870 §6: SIZE over the limit is refused at MAIL."""
        h = Harness(limits=Limits(max_message_size=1000))
        h.ehlo()
        self.assertEqual(
            h.command("MAIL FROM:<a@remote.test> SIZE=1001"),
            ["552 5.3.4 Message size exceeds fixed maximum message size of 1000 octets"],
        )
        self.assertEqual(h.command("MAIL FROM:<a@remote.test> SIZE=1000"), ["250 2.1.0 Sender <a@remote.test> ok"])

    def test_sizeSyntax(self) -> None:
        self.assertEqual(self.h.command("MAIL FROM:<a@remote.test> SIZE=ten"), ["501 5.5.4 Syntax: SIZE=<octets>"])
        self.assertEqual(self.h.command("MAIL FROM:<a@remote.test> SIZE"), ["501 5.5.4 Syntax: SIZE=<octets>"])

    def test_body(self) -> None:
        """RFC 6152: BODY=7BIT and BODY=8BITMIME."""
        self.assertEqual(self.h.command("MAIL FROM:<a@remote.test> BODY=8BITMIME")[0][:3], "250")
        self.h.command("RSET")
        self.assertEqual(self.h.command("MAIL FROM:<a@remote.test> body=7bit")[0][:3], "250")
        self.h.command("RSET")
        self.assertEqual(
            self.h.command("MAIL FROM:<a@remote.test> BODY=BINARYMIME"), ["501 5.5.4 BODY must be 7BIT or 8BITMIME"]
        )

    def test_authParameterIgnored(self) -> None:
        """RFC 4954 §5: AUTH=<> is accepted and ignored."""
        self.assertEqual(self.h.command("MAIL FROM:<a@remote.test> AUTH=<>")[0][:3], "250")

    def test_unknownMailParameter(self) -> None:
        self.assertEqual(self.h.command("MAIL FROM:<a@remote.test> RET=HDRS"), ["555 5.5.4 Unsupported parameter RET"])

    def test_repeatedParameter(self) -> None:
        self.assertEqual(
            self.h.command("MAIL FROM:<a@remote.test> SIZE=1 SIZE=2"), ["501 5.5.4 Parameter SIZE given twice"]
        )

    def test_unknownRcptParameter(self) -> None:
        self.h.command("MAIL FROM:<a@remote.test>")
        self.assertEqual(
            self.h.command("RCPT TO:<alice@example.test> NOTIFY=NEVER"), ["555 5.5.4 Unsupported parameter NOTIFY"]
        )

    def test_utf8NeedsParameter(self) -> None:
        """RFC 6531 §3.5: a non-ASCII address without SMTPUTF8 is refused."""
        self.assertEqual(self.h.command("MAIL FROM:<jörg@remote.test>"), ["553 5.6.7 Non-ASCII address needs SMTPUTF8"])

    def test_utf8WithParameter(self) -> None:
        self.h.delivery.users.add("jörg@example.test")
        self.assertEqual(self.h.command("MAIL FROM:<jörg@remote.test> SMTPUTF8"), ["250 2.1.0 Sender <jörg@remote.test> ok"])
        self.assertEqual(self.h.command("RCPT TO:<Jörg@example.test>"), ["250 2.1.5 Recipient <jörg@example.test> ok"])

    def test_utf8InOtherCommands(self) -> None:
        self.assertEqual(self.h.command("NOOP ü"), ["500 5.5.2 Non-ASCII characters in command"])

    def test_rcptBeforeMail(self) -> None:
        self.assertEqual(self.h.command("RCPT TO:<alice@example.test>"), ["503 5.5.1 Need MAIL before RCPT"])

    def test_rcpt(self) -> None:
        self.h.command("MAIL FROM:<a@remote.test>")
        self.assertEqual(self.h.command("RCPT TO:<Alice@Example.test>"), ["250 2.1.5 Recipient <alice@example.test> ok"])

    def test_rcptUnknownUser(self) -> None:
        """The delivery agent's refusal is the reply."""
        self.h.command("MAIL FROM:<a@remote.test>")
        self.assertEqual(
            self.h.command("RCPT TO:<carol@example.test>"), ["550 5.1.1 <carol@example.test>: no such user here"]
        )

    def test_relayDenied(self) -> None:
        self.h.command("MAIL FROM:<a@remote.test>")
        self.assertEqual(self.h.command("RCPT TO:<x@elsewhere.test>"), ["554 5.7.1 <x@elsewhere.test>: relay access denied"])

    def test_rcptBadSyntax(self) -> None:
        self.h.command("MAIL FROM:<a@remote.test>")
        self.assertEqual(self.h.command("RCPT TO:<nobody>"), ["501 5.1.3 Bad address syntax: it has no @domain"])
        self.assertEqual(self.h.command("RCPT FROM:<a@b.test>"), ["501 5.5.4 Syntax: TO:<address>"])

    def test_postmaster(self) -> None:
        """
        RFC 5321 §4.5.1: <Postmaster> without a domain is accepted, for the
        primary local domain's postmaster (not the host name, which is not
        a local domain and would be relaying).
        """
        self.h.command("MAIL FROM:<a@remote.test>")
        self.assertEqual(self.h.command("RCPT TO:<Postmaster>"), ["250 2.1.5 Recipient <postmaster@example.test> ok"])

    def test_tooManyRecipients(self) -> None:
        """RFC 5321 §4.5.3.1.10: 452 4.5.3 past the limit."""
        h = Harness(limits=Limits(max_recipients=1))
        h.ehlo()
        h.envelope("a@remote.test", "alice@example.test")
        self.assertEqual(h.command("RCPT TO:<bob@example.test>"), ["452 4.5.3 Too many recipients"])

    def test_dataBeforeMail(self) -> None:
        self.assertEqual(self.h.command("DATA"), ["503 5.5.1 Need MAIL before DATA"])

    def test_dataBeforeRcpt(self) -> None:
        self.h.command("MAIL FROM:<a@remote.test>")
        self.assertEqual(self.h.command("DATA"), ["503 5.5.1 Need RCPT before DATA"])

    def test_dataArgument(self) -> None:
        self.h.envelope()
        self.assertEqual(self.h.command("DATA now"), ["501 5.5.4 DATA takes no arguments"])

    def test_data(self) -> None:
        """The message is stored byte for byte, dot-stuffing undone, after a Received header."""
        self.h.envelope("a@remote.test", "alice@example.test")
        self.assertEqual(self.h.command("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])
        body = b"Subject: hi\r\n\r\n..leading dot\r\n.\r\n"
        self.assertEqual(self.h.send(body), ["250 2.0.0 Ok: queued as test-id"])
        [message] = self.h.delivery.messages
        self.assertTrue(message.finished)
        self.assertEqual(message.returnPath, "a@remote.test")
        self.assertEqual(message.recipients, ["alice@example.test"])
        received, rest = message.data.split(b"\r\nSubject", 1)
        self.assertEqual(rest, b": hi\r\n\r\n.leading dot\r\n")
        self.assertRegex(
            received.decode(),
            r"^Received: from client\.example\.org \(\[192\.0\.2\.7\]\)\r\n"
            r"\tby mx\.example\.test with ESMTP id [0-9A-F]{12}\r\n"
            r"\tfor <alice@example\.test>; Thu, 01 Jan 1970 00:00:00 \+0000$",
        )

    def test_receivedManyRecipients(self) -> None:
        """No C{for} clause when there are several recipients (it would leak Bcc)."""
        self.h.envelope("a@remote.test", "alice@example.test", "bob@example.test")
        self.h.command("DATA")
        self.h.send(b"x\r\n.\r\n")
        header = self.h.delivery.messages[0].data.split(b"\r\nx\r\n")[0]
        self.assertNotIn(b"for <", header)
        self.assertIn(b" id ", header)
        self.assertIn(b";\r\n\tThu, 01 Jan 1970", header)

    def test_duplicateRecipient(self) -> None:
        self.h.envelope("a@remote.test", "alice@example.test", "Alice@example.test")
        self.h.command("DATA")
        self.h.send(b"x\r\n.\r\n")
        self.assertEqual(self.h.delivery.messages[0].recipients, ["alice@example.test"])

    def test_receiverStartsAtData(self) -> None:
        """
        The receiver gets data as it arrives, not at the end: the header
        section once it is complete, then the body as it comes.
        """
        self.h.envelope()
        self.h.command("DATA")
        self.h.send(b"Subject: streaming\r\n")
        self.assertNotIn(b"Subject", self.h.delivery.messages[0].data)
        self.h.send(b"\r\nbody line\r\n")
        # (The CRLF waits: it could begin the end-of-data marker.)
        self.assertIn(b"\r\nSubject: streaming\r\n\r\nbody line", self.h.delivery.messages[0].data)
        self.assertFalse(self.h.delivery.messages[0].finished)

    def test_emptyMessage(self) -> None:
        self.h.envelope()
        self.h.command("DATA")
        self.assertEqual(self.h.send(b".\r\n"), ["250 2.0.0 Ok: queued as test-id"])
        self.assertTrue(self.h.delivery.messages[0].data.startswith(b"Received: "))

    def test_storeFailure(self) -> None:
        """finish() failing: 451 4.3.0, and the session goes on."""
        self.h.delivery.result = OSError("disk full")
        self.h.envelope()
        self.h.command("DATA")
        self.assertEqual(self.h.send(b"x\r\n.\r\n"), ["451 4.3.0 Could not store the message, try again later"])
        self.flushLoggedErrors(OSError)
        self.assertEqual(self.h.command("MAIL FROM:<a@remote.test>")[0][:3], "250")

    def test_replyOnlyWhenStored(self) -> None:
        """250 only when finish() fires; pipelined commands wait meanwhile."""
        receiver = SlowReceiver()
        self.h.delivery.receive = lambda returnPath, recipients: receiver  # type: ignore[method-assign]
        self.h.envelope()
        self.h.command("DATA")
        self.assertEqual(self.h.send(b"x\r\n.\r\nNOOP\r\n"), [])
        # A little pipelined input just waits; no need to stop reading.
        self.assertEqual(self.h.transport.producerState, "producing")
        assert receiver.finishing is not None
        receiver.finishing.callback("m1")
        self.assertEqual(self.h.take(), ["250 2.0.0 Ok: queued as m1", "250 2.0.0 Ok"])
        self.assertEqual(self.h.transport.producerState, "producing")

    def test_floodWhileStoringStopsReading(self) -> None:
        """
        A client that keeps sending while its message is being stored is
        paused once the waiting input passes INPUT_HIGH_WATER, and resumed
        when the reply has gone out.
        """
        receiver = SlowReceiver()
        self.h.delivery.receive = lambda returnPath, recipients: receiver  # type: ignore[method-assign]
        self.h.envelope()
        self.h.command("DATA")
        self.h.send(b"x\r\n.\r\n")
        self.h.send(b"NOOP\r\n" * (INPUT_HIGH_WATER // 6 + 1))
        self.assertEqual(self.h.transport.producerState, "paused")
        assert receiver.finishing is not None
        receiver.finishing.callback("m1")
        self.assertEqual(self.h.transport.producerState, "producing")

    def test_connectionLostWhileStoring(self) -> None:
        """A message already finishing is not aborted by a lost connection."""
        receiver = SlowReceiver()
        self.h.delivery.receive = lambda returnPath, recipients: receiver  # type: ignore[method-assign]
        self.h.envelope()
        self.h.command("DATA")
        self.h.send(b"x\r\n.\r\n")
        self.h.disconnect()
        assert receiver.finishing is not None
        receiver.finishing.callback("m1")
        self.assertFalse(receiver.aborted)

    def test_connectionLostAbortsMessage(self) -> None:
        self.h.envelope()
        self.h.command("DATA")
        self.h.send(b"x\r\n")
        self.h.disconnect()
        self.assertTrue(self.h.delivery.messages[0].aborted)

    def test_sizeExceededInData(self) -> None:
        """RFC 1870 §6.2: 552 5.3.4 at the end of data; the receiver is aborted at once."""
        h = Harness(limits=Limits(max_message_size=100))
        h.ehlo()
        h.envelope()
        h.command("DATA")
        h.send(b"x" * 60 + b"\r\n" + b"y" * 60 + b"\r\n")
        self.assertTrue(h.delivery.messages[0].aborted)
        self.assertEqual(h.send(b".\r\n"), ["552 5.3.4 Message exceeds 100 octets"])
        self.assertEqual(h.command("MAIL FROM:<a@remote.test>")[0][:3], "250")

    def test_lineTooLongInData(self) -> None:
        """RFC 5321 §4.5.3.1.6: a 1001-octet line is refused, not split."""
        self.h.envelope()
        self.h.command("DATA")
        self.h.send(b"a" * 999 + b"\r\n")
        self.assertEqual(self.h.send(b".\r\n"), ["550 5.6.0 Message has a line longer than 1000 octets"])
        self.assertTrue(self.h.delivery.messages[0].aborted)

    def test_longestLineAccepted(self) -> None:
        """998 octets plus CRLF is fine, and a stuffed dot does not count."""
        self.h.envelope()
        self.h.command("DATA")
        self.h.send(b"a" * 998 + b"\r\n" + b"." + b"." * 998 + b"\r\n")
        self.assertEqual(self.h.send(b".\r\n"), ["250 2.0.0 Ok: queued as test-id"])

    def test_bdat(self) -> None:
        """RFC 3030: chunks, then BDAT n LAST."""
        self.h.envelope()
        self.assertEqual(self.h.send(b"BDAT 14\r\nSubject: x\r\n\r\n"), ["250 2.0.0 14 octets received"])
        self.assertEqual(self.h.send(b"BDAT 6 LAST\r\n.body\n"), ["550 5.6.0 Message contains a bare CR or LF"])
        self.h.envelope()
        self.h.send(b"BDAT 14\r\nSubject: x\r\n\r\n")
        self.assertEqual(self.h.send(b"BDAT 7 LAST\r\n.body\r\n"), ["250 2.0.0 Ok: queued as test-id"])
        self.assertTrue(self.h.delivery.messages[1].data.endswith(b"\r\nSubject: x\r\n\r\n.body\r\n"))

    def test_bdatSplitAcrossPackets(self) -> None:
        self.h.envelope()
        self.assertEqual(self.h.send(b"BDAT 5 LAST\r\nab"), [])
        self.assertEqual(self.h.send(b"c\r\nNOOP\r\n"), ["250 2.0.0 Ok: queued as test-id", "250 2.0.0 Ok"])

    def test_bdatZeroLast(self) -> None:
        self.h.envelope()
        self.h.send(b"BDAT 3\r\nx\r\n")
        self.assertEqual(self.h.command("BDAT 0 LAST"), ["250 2.0.0 Ok: queued as test-id"])
        self.assertTrue(self.h.delivery.messages[0].data.endswith(b"\r\nx\r\n"))

    def test_bdatWithoutMail(self) -> None:
        """RFC 3030 §2: the chunk is read and discarded; its bytes are not commands."""
        self.assertEqual(self.h.send(b"BDAT 6 LAST\r\nQUIT\r\n"), ["503 5.5.1 Need MAIL before BDAT"])
        self.assertFalse(self.h.transport.disconnecting)

    def test_bdatWithoutRcpt(self) -> None:
        self.h.command("MAIL FROM:<a@remote.test>")
        self.assertEqual(self.h.send(b"BDAT 6\r\nQUIT\r\n"), ["503 5.5.1 Need RCPT before BDAT"])

    def test_bdatSyntax(self) -> None:
        for bad in ("BDAT", "BDAT x", "BDAT 1 FIRST", "BDAT -1"):
            self.assertEqual(self.h.command(bad), ["501 5.5.4 Syntax: BDAT <size> [LAST]"], bad)

    def test_bdatTooBig(self) -> None:
        h = Harness(limits=Limits(max_message_size=10))
        h.ehlo()
        h.envelope()
        self.assertEqual(h.send(b"BDAT 12\r\n0123456789\r\n"), ["552 5.3.4 Message exceeds 10 octets"])
        self.assertTrue(h.delivery.messages[0].aborted)
        self.assertEqual(h.send(b"BDAT 3 LAST\r\nx\r\n"), ["503 5.5.1 Need MAIL before BDAT"])

    def test_bdatReceiverRefused(self) -> None:
        """If no receiver can be started, the chunk is still read, not run."""

        def refuse(returnPath: str, recipients: object) -> None:
            raise SMTPReply(451, "4.3.0 queue full")

        self.h.delivery.receive = refuse  # type: ignore[method-assign]
        self.h.envelope()
        self.assertEqual(self.h.send(b"BDAT 6 LAST\r\nQUIT\r\n"), ["451 4.3.0 queue full"])
        self.assertFalse(self.h.transport.disconnecting)
        self.assertEqual(self.h.command("RCPT TO:<alice@example.test>"), ["503 5.5.1 Need MAIL before RCPT"])

    def test_dataReceiverBroken(self) -> None:
        def broken(returnPath: str, recipients: object) -> None:
            raise RuntimeError("bug")

        self.h.delivery.receive = broken  # type: ignore[method-assign]
        self.h.envelope()
        self.assertEqual(self.h.command("DATA"), ["451 4.3.0 Local error in processing, try again later"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.h.command("RCPT TO:<alice@example.test>"), ["503 5.5.1 Need MAIL before RCPT"])

    def test_writeFails(self) -> None:
        """A receiver that breaks half-way: the data is read to its end, then 451."""
        self.h.envelope()
        self.h.command("DATA")
        receiver = self.h.delivery.messages[0]

        def broken(data: bytes) -> None:
            raise OSError("disk gone")

        receiver.write = broken  # type: ignore[method-assign]
        self.assertEqual(self.h.send(b"x\r\nRSET\r\n"), [])
        self.assertEqual(
            self.h.send(b"y\r\n.\r\nNOOP\r\n"),
            ["451 4.3.0 Could not store the message, try again later", "250 2.0.0 Ok"],
        )
        self.assertTrue(receiver.aborted)
        self.assertFalse(receiver.finished)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_errorsForgivenAfterDelivery(self) -> None:
        """As Postfix: the error count starts again after a delivered message."""
        h = Harness(limits=Limits(max_errors=3))
        h.ehlo()
        for _ in range(3):
            h.command("FROB")
            h.command("FROB")
            h.envelope()
            h.command("DATA")
            self.assertEqual(h.send(b"x\r\n.\r\n"), ["250 2.0.0 Ok: queued as test-id"])
        self.assertFalse(h.transport.disconnecting)

    def test_dataAfterBdat(self) -> None:
        self.h.envelope()
        self.h.send(b"BDAT 3\r\nx\r\n")
        self.assertEqual(self.h.command("DATA"), ["503 5.5.1 BDAT already in progress"])
        self.assertEqual(self.h.command("RCPT TO:<bob@example.test>"), ["503 5.5.1 Message data already started"])

    def test_pipelining(self) -> None:
        """RFC 2920: a whole transaction in one packet, replies in order."""
        replies = self.h.send(
            b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
            b"RCPT TO:<nobody@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
        )
        self.assertEqual(
            replies,
            [
                "250 2.1.0 Sender <a@remote.test> ok",
                "250 2.1.5 Recipient <alice@example.test> ok",
                "550 5.1.1 <nobody@example.test>: no such user here",
                "250 2.1.5 Recipient <bob@example.test> ok",
                "354 End data with <CR><LF>.<CR><LF>",
            ],
        )

    def test_unexpectedError(self) -> None:
        """A bug is logged with its traceback and answered 451 4.3.0."""

        def broken(address: str, sender: object) -> None:
            raise RuntimeError("bug")

        self.h.delivery.checkRecipient = broken  # type: ignore[method-assign]
        self.h.command("MAIL FROM:<a@remote.test>")
        self.assertEqual(
            self.h.command("RCPT TO:<alice@example.test>"), ["451 4.3.0 Local error in processing, try again later"]
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_asyncRecipientCheck(self) -> None:
        """A recipient check that answers later holds the following replies back."""
        pending: List[Deferred] = []

        def later(address: str, sender: object) -> Deferred:
            pending.append(Deferred())
            return pending[-1]

        self.h.delivery.checkRecipient = later  # type: ignore[method-assign]
        self.h.command("MAIL FROM:<a@remote.test>")
        self.assertEqual(self.h.send(b"RCPT TO:<alice@example.test>\r\nNOOP\r\n"), [])
        pending[0].errback(SMTPReply(451, "4.3.0 try later"))
        self.assertEqual(self.h.take(), ["451 4.3.0 try later", "250 2.0.0 Ok"])

    def test_loggedMessage(self) -> None:
        """One log line per accepted message: id, sender, recipients, size, peer."""
        events: List[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.h.envelope("a@remote.test", "alice@example.test")
        self.h.command("DATA")
        self.h.send(b"x\r\n.\r\n")
        [event] = [e for e in events if "accepted" in e.get("log_format", "")]
        self.assertEqual((event["id"], event["sender"], event["recipients"], event["size"], event["peer"]),
                         ("test-id", "a@remote.test", "alice@example.test", 3, PEER))


class AuthTests(SynchronousTestCase):
    """RFC 4954 AUTH with PLAIN (RFC 4616) and LOGIN."""

    def setUp(self) -> None:
        self.h = Harness(role="smtps", tls=True)
        self.h.ehlo()

    def test_plainInitialResponse(self) -> None:
        self.assertEqual(self.h.login(), ["235 2.7.0 Authentication successful"])
        self.assertEqual(self.h.protocol._sender.address, "alice@example.test")

    def test_plainChallenge(self) -> None:
        self.assertEqual(self.h.command("AUTH PLAIN"), ["334 "])
        self.assertEqual(self.h.command(plain("alice@example.test", "secret")), ["235 2.7.0 Authentication successful"])

    def test_plainEmptyInitialResponse(self) -> None:
        """RFC 4954 §4: C{=} is an empty initial response."""
        self.assertEqual(self.h.command("AUTH PLAIN ="), ["501 5.5.2 Invalid PLAIN response"])

    def test_plainAuthzid(self) -> None:
        self.assertEqual(
            self.h.command("AUTH PLAIN " + plain("alice@example.test", "secret", "alice@example.test")),
            ["235 2.7.0 Authentication successful"],
        )

    def test_plainOtherAuthzid(self) -> None:
        self.assertEqual(
            self.h.command("AUTH PLAIN " + plain("alice@example.test", "secret", "bob@example.test")),
            ["535 5.7.8 Authentication credentials invalid"],
        )

    def test_login(self) -> None:
        self.assertEqual(self.h.command("AUTH LOGIN"), ["334 VXNlcm5hbWU6"])
        self.assertEqual(self.h.command(base64.b64encode(b"alice@example.test").decode()), ["334 UGFzc3dvcmQ6"])
        self.assertEqual(self.h.command(base64.b64encode(b"secret").decode()), ["235 2.7.0 Authentication successful"])

    def test_loginInitialResponse(self) -> None:
        self.assertEqual(self.h.command("AUTH LOGIN " + base64.b64encode(b"alice@example.test").decode()), ["334 UGFzc3dvcmQ6"])
        self.assertEqual(self.h.command(base64.b64encode(b"wrong").decode()), ["535 5.7.8 Authentication credentials invalid"])

    def test_failure(self) -> None:
        self.assertEqual(self.h.login(password="wrong"), ["535 5.7.8 Authentication credentials invalid"])
        self.assertEqual(self.h.authenticator.failures, [("alice@example.test", PEER)])
        self.assertEqual(self.h.login(), ["235 2.7.0 Authentication successful"])

    def test_longInitialResponse(self) -> None:
        """RFC 4954 §4: an AUTH command line may be up to 12288 octets."""
        line = "AUTH PLAIN " + plain("alice@example.test", "p" * 6000)
        self.assertGreater(len(line), 2048)
        self.assertEqual(self.h.command(line), ["535 5.7.8 Authentication credentials invalid"])
        self.assertEqual(self.h.command("AUTH PLAIN " + "A" * 12300), ["500 5.5.6 line too long"])

    def test_cancel(self) -> None:
        self.h.command("AUTH LOGIN")
        self.assertEqual(self.h.command("*"), ["501 5.0.0 Authentication cancelled"])
        self.assertEqual(self.h.command("NOOP"), ["250 2.0.0 Ok"])

    def test_badBase64(self) -> None:
        self.assertEqual(self.h.command("AUTH PLAIN %%%"), ["501 5.5.2 Invalid base64 data"])
        self.h.command("AUTH PLAIN")
        self.assertEqual(self.h.command("not base64!"), ["501 5.5.2 Invalid base64 data"])

    def test_secondAuth(self) -> None:
        self.h.login()
        self.assertEqual(self.h.login(), ["503 5.5.1 Already authenticated"])

    def test_authBeforeEhlo(self) -> None:
        h = Harness(role="smtps")
        self.assertEqual(h.login(), ["503 5.5.1 Send EHLO or HELO first"])

    def test_authDuringTransaction(self) -> None:
        h = Harness(allowPlaintextAuth=True)
        h.ehlo()
        h.command("MAIL FROM:<a@remote.test>")
        self.assertEqual(h.login(), ["503 5.5.1 AUTH not allowed during a mail transaction"])

    def test_unknownMechanism(self) -> None:
        self.assertEqual(self.h.command("AUTH CRAM-MD5"), ["504 5.5.4 Unrecognized authentication mechanism"])

    def test_encryptionRequired(self) -> None:
        """RFC 4954 §6: 538 5.7.11 on a cleartext connection."""
        for role in ("mta", "submission"):
            h = Harness(role=role, tls=True)
            h.ehlo()
            self.assertEqual(h.login(), ["538 5.7.11 Encryption required for requested authentication mechanism"])

    def test_plaintextAllowed(self) -> None:
        h = Harness(role="submission", allowPlaintextAuth=True)
        h.ehlo()
        self.assertEqual(h.login(), ["235 2.7.0 Authentication successful"])

    def test_logoutOnConnectionLost(self) -> None:
        calls: List[int] = []
        self.h.authenticator.login = lambda c, p, i: __import__("twisted.internet.defer").internet.defer.succeed(  # type: ignore[method-assign]
            (i, FakeSender("alice@example.test"), lambda: calls.append(1))
        )
        self.h.login()
        self.h.disconnect()
        self.assertEqual(calls, [1])

    def test_authenticatorError(self) -> None:
        """Not a failed login but a broken authenticator: 454 4.7.0, logged."""
        from twisted.internet.defer import fail

        self.h.authenticator.login = lambda c, p, i: fail(RuntimeError("db down"))  # type: ignore[method-assign]
        self.assertEqual(self.h.login(), ["454 4.7.0 Temporary authentication failure"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_loginBusy(self) -> None:
        """
        Issue 11: too many logins in progress (L{LoginBusy}) is answered
        C{454 4.7.0}, without a traceback; it does not count towards
        C{max_errors}, so the session goes on and a retry may succeed.
        """
        from twisted.internet.defer import fail

        h = Harness(role="smtps", tls=True, limits=Limits(max_errors=2))
        h.ehlo()
        login = h.authenticator.login
        h.authenticator.login = lambda c, p, i: fail(LoginBusy())  # type: ignore[method-assign]
        for _ in range(3):
            self.assertEqual(h.login(), ["454 4.7.0 Too many login attempts in progress, try again later"])
        self.assertFalse(h.transport.disconnecting)
        self.assertEqual(self.flushLoggedErrors(), [])
        h.authenticator.login = login  # type: ignore[method-assign]
        self.assertEqual(h.login(), ["235 2.7.0 Authentication successful"])


class SubmissionTests(SynchronousTestCase):
    """RFC 6409: submission requires AUTH, and senders may only be themselves."""

    def setUp(self) -> None:
        self.h = Harness(role="submission", allowPlaintextAuth=True)
        self.h.ehlo()

    def test_authRequired(self) -> None:
        self.assertEqual(self.h.command("MAIL FROM:<alice@example.test>"), ["530 5.7.0 Authentication required"])

    def test_smtpsAuthRequired(self) -> None:
        h = Harness(role="smtps")
        h.ehlo()
        self.assertEqual(h.command("MAIL FROM:<alice@example.test>"), ["530 5.7.0 Authentication required"])

    def test_ownAddress(self) -> None:
        self.h.login()
        self.assertEqual(self.h.command("MAIL FROM:<Alice@example.test>"), ["250 2.1.0 Sender <alice@example.test> ok"])

    def test_otherAddress(self) -> None:
        self.h.login()
        self.assertEqual(
            self.h.command("MAIL FROM:<bob@example.test>"),
            ["553 5.7.1 <bob@example.test> is not yours to send as (authenticated as alice@example.test)"],
        )

    def test_relayWhenAuthenticated(self) -> None:
        self.h.login()
        self.h.envelope("alice@example.test", "someone@elsewhere.test")

    def test_fromHeaderChecked(self) -> None:
        """The From: field must be the sender's too (refused at end of data)."""
        self.h.login()
        self.h.envelope("alice@example.test", "bob@example.test")
        self.h.command("DATA")
        replies = self.h.send(b"From: Bob <bob@example.test>\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
        self.assertEqual(replies, ["553 5.7.1 From: <bob@example.test> is not yours to send as"])
        self.assertTrue(self.h.delivery.messages[0].aborted)

    def test_fromHeaderSecondAddress(self) -> None:
        self.h.login()
        self.h.envelope("alice@example.test", "bob@example.test")
        self.h.command("DATA")
        replies = self.h.send(b"From: alice@example.test,\r\n  mallory@example.test\r\n\r\nhi\r\n.\r\n")
        self.assertEqual(replies, ["553 5.7.1 From: <mallory@example.test> is not yours to send as"])

    def test_fromHeaderOwn(self) -> None:
        self.h.login()
        self.h.envelope("alice@example.test", "bob@example.test")
        self.h.command("DATA")
        self.h.send(b"Subject: x\r\nFrom: \"Alice\" <ALICE@example.test>\r\n")
        replies = self.h.send(b"\r\nbody\r\nFrom: bob@example.test\r\n.\r\n")
        self.assertEqual(replies, ["250 2.0.0 Ok: queued as test-id"])

    def test_fromHeaderUTF8(self) -> None:
        """RFC 6532: a UTF-8 From: is compared as text."""
        h = Harness(role="submission", allowPlaintextAuth=True)
        h.authenticator.login = lambda c, p, i: __import__("twisted.internet.defer").internet.defer.succeed(  # type: ignore[method-assign]
            (i, FakeSender("jörg@example.test"), lambda: None)
        )
        h.ehlo()
        h.login()
        self.assertEqual(h.command("MAIL FROM:<jörg@example.test> SMTPUTF8")[0][:3], "250")
        self.assertEqual(h.command("RCPT TO:<bob@example.test>")[0][:3], "250")
        h.command("DATA")
        replies = h.send("From: Jörg <Jörg@example.test>\r\n\r\nhi\r\n.\r\n".encode("utf-8"))
        self.assertEqual(replies, ["250 2.0.0 Ok: queued as test-id"])

    def test_fromHeaderInBdat(self) -> None:
        self.h.login()
        self.h.envelope("alice@example.test", "bob@example.test")
        message = b"From: bob@example.test\r\n\r\nhi\r\n"
        self.assertEqual(
            self.h.send(b"BDAT %d LAST\r\n%s" % (len(message), message)),
            ["553 5.7.1 From: <bob@example.test> is not yours to send as"],
        )

    def test_receivedProtocol(self) -> None:
        """RFC 3848: ESMTPA once authenticated (ESMTPSA over TLS)."""
        self.h.login()
        self.h.envelope("alice@example.test", "bob@example.test")
        self.h.command("DATA")
        self.h.send(b"\r\nx\r\n.\r\n")
        self.assertIn(b" with ESMTPA id ", self.h.delivery.messages[0].data)
        h = Harness(role="smtps")
        h.ehlo()
        h.login()
        h.envelope("alice@example.test", "bob@example.test")
        h.send(b"BDAT 3 LAST\r\nx\r\n")
        self.assertIn(b" with ESMTPSA id ", h.delivery.messages[0].data)


class StartTLSTests(SynchronousTestCase):
    """RFC 3207 on a string transport."""

    def setUp(self) -> None:
        self.h = Harness(role="submission", tls=True)
        self.h.ehlo()

    def test_startTLS(self) -> None:
        self.assertEqual(self.h.command("STARTTLS"), ["220 2.0.0 Ready to start TLS"])
        self.assertIs(self.h.transport.tlsOptions, self.h.tlsOptions)
        lines = self.h.ehlo()
        self.assertNotIn("250-STARTTLS", lines)
        self.assertEqual(lines[-1], "250 AUTH PLAIN LOGIN")

    def test_forgetsEhlo(self) -> None:
        self.h.command("STARTTLS")
        self.assertEqual(self.h.login(), ["503 5.5.1 Send EHLO or HELO first"])

    def test_secondStartTLS(self) -> None:
        self.h.command("STARTTLS")
        self.h.ehlo()
        self.assertEqual(self.h.command("STARTTLS"), ["503 5.5.1 TLS already active"])

    def test_startTLSOnSMTPS(self) -> None:
        h = Harness(role="smtps", tls=True)
        h.ehlo()
        self.assertEqual(h.command("STARTTLS"), ["503 5.5.1 TLS already active"])

    def test_notOffered(self) -> None:
        h = Harness()
        h.ehlo()
        self.assertEqual(h.command("STARTTLS"), ["502 5.5.1 STARTTLS not available"])

    def test_beforeEhlo(self) -> None:
        h = Harness(tls=True)
        self.assertEqual(h.command("STARTTLS"), ["503 5.5.1 Send EHLO or HELO first"])

    def test_startTLSFails(self) -> None:
        """A TLS set-up error after the 220 hangs up rather than going on in clear text."""

        def broken(options: object) -> None:
            raise ValueError("bad context")

        self.h.transport.startTLS = broken  # type: ignore[method-assign]
        self.assertEqual(self.h.command("STARTTLS"), ["220 2.0.0 Ready to start TLS"])
        self.assertTrue(self.h.transport.disconnecting)
        self.assertEqual(self.h.command("NOOP"), [])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_argument(self) -> None:
        self.assertEqual(self.h.command("STARTTLS now"), ["501 5.5.4 STARTTLS takes no arguments"])

    def test_authAfterTLS(self) -> None:
        self.h.command("STARTTLS")
        self.h.ehlo()
        self.assertEqual(self.h.login(), ["235 2.7.0 Authentication successful"])
        self.h.envelope("alice@example.test", "bob@example.test")
        self.h.command("DATA")
        self.h.send(b"\r\nx\r\n.\r\n")
        self.assertIn(b" with ESMTPSA id ", self.h.delivery.messages[0].data)


def referenceDecode(stream: bytes):
    """
    The obvious line-by-line DATA decoder (RFC 5321 §4.5.2), to compare
    the chunked one with.
    """
    lines = stream.split(b"\r\n")
    out = []
    for i, line in enumerate(lines[:-1]):
        if line == b".":
            return b"".join(out), b"\r\n".join(lines[i + 1 :])
        out.append((line[1:] if line.startswith(b".") else line) + b"\r\n")
    return None


class DataDecoderTests(SynchronousTestCase):
    """L{DotDecoder} and L{MessageChecker} whatever the chunk boundaries."""

    def feed(self, stream: bytes, cuts: List[int]):
        decoder = DotDecoder()
        out = []
        start = 0
        for cut in sorted(cuts) + [len(stream)]:
            content, rest = decoder.feed(stream[start:cut])
            out.append(content)
            if rest is not None:
                return b"".join(out), rest + stream[cut:]
            start = cut
        return None

    def test_randomSplits(self) -> None:
        rng = random.Random(5321)
        pieces = [b"a", b".", b"..", b"\r\n", b"\r\n.", b"x.y", b"\r\n..\r\n", b" "]
        for _ in range(3000):
            body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
            stream = body + b"\r\n.\r\nNEXT"
            expected = referenceDecode(stream)
            cuts = [rng.randint(0, len(stream)) for _ in range(rng.randint(0, 4))]
            self.assertEqual(self.feed(stream, cuts), expected, (stream, cuts))

    def test_heldBytesBounded(self) -> None:
        decoder = DotDecoder()
        for piece in (b"\r", b"\n", b".", b"\r"):
            self.assertEqual(decoder.feed(piece), (b"", None))
        # An empty line, then the end.
        self.assertEqual(decoder.feed(b"\n"), (b"\r\n", b""))

    def test_checkerSplitCRLF(self) -> None:
        checker = MessageChecker(100)
        checker.feed(b"ab\r")
        checker.feed(b"\ncd\r\n")
        checker.finish()
        self.assertFalse(checker.bareLineEnding)

    def test_checkerBare(self) -> None:
        for chunks in ([b"a\nb"], [b"a\r", b"b"], [b"a\r"], [b"\n"], [b"a\r\r\n"], [b"ab\r\n", b"\n"]):
            checker = MessageChecker(100)
            for c in chunks:
                checker.feed(c)
            checker.finish()
            self.assertTrue(checker.bareLineEnding, chunks)

    def test_checkerRandomSplits(self) -> None:
        """The chunked checks agree with line-by-line ones wherever the cuts fall."""
        rng = random.Random(3030)
        pieces = [b"a", b"a" * 997, b"a" * 998, b"a" * 999, b"\r\n", b"\r\n", b"\r\n", b"\r", b"\n", b"\0"]
        for _ in range(2000):
            stream = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
            bare = re.search(rb"\r(?!\n)|(?<!\r)\n", stream) is not None
            cuts = sorted(rng.randint(0, len(stream)) for _ in range(rng.randint(0, 5)))
            checker = MessageChecker(10**6)
            start = 0
            for cut in cuts + [len(stream)]:
                checker.feed(stream[start:cut])
                start = cut
            checker.finish()
            self.assertEqual(checker.bareLineEnding, bare, (stream, cuts))
            self.assertEqual(checker.nul, b"\0" in stream)
            self.assertEqual(checker.size, len(stream))
            if not bare:
                tooLong = max(len(line) for line in stream.split(b"\r\n")) > 998
                self.assertEqual(checker.lineTooLong, tooLong, (stream, cuts))

    def test_checkerLineLengthAcrossChunks(self) -> None:
        checker = MessageChecker(10000)
        checker.feed(b"a" * 500)
        checker.feed(b"a" * 498 + b"\r\n")
        self.assertFalse(checker.lineTooLong)
        checker.feed(b"b" * 998)
        checker.feed(b"b")
        self.assertTrue(checker.lineTooLong)

    def test_longStreamsRandomSplits(self) -> None:
        """
        Messages of many lines, some near or over the length limit, some
        dot-stuffed, a few with a bare CR or LF or a NUL, cut into chunks
        of any size (several lines per chunk, as from a socket): the
        decoder agrees with the line-by-line one and the checker with
        line-by-line checks.
        """
        rng = random.Random(6152)
        lengths = [0, 1, 76, 76, 76, 500, 997, 998, 999, 1000, 2500]
        for _ in range(300):
            lines = []
            for _ in range(rng.randint(1, 40)):
                line = b"x" * rng.choice(lengths)
                if line and rng.random() < 0.2:
                    line = b"." + line[1:]
                lines.append(line)
            body = b"\r\n".join(lines) + b"\r\n"
            if rng.random() < 0.3:
                spot = rng.randint(0, len(body))
                body = body[:spot] + rng.choice([b"\r", b"\n", b"\0", b"\r\r\n"]) + body[spot:]
            stream = body + b"\r\n.\r\nNEXT"
            cuts = [rng.randint(0, len(stream)) for _ in range(rng.randint(0, 8))]
            expected = referenceDecode(stream)
            self.assertEqual(self.feed(stream, cuts), expected, (stream, cuts))
            assert expected is not None
            content = expected[0]
            checker = MessageChecker(10**7)
            bounds = sorted(rng.randint(0, len(content)) for _ in range(rng.randint(0, 8)))
            for start, end in zip([0] + bounds, bounds + [len(content)]):
                checker.feed(content[start:end])
            checker.finish()
            bare = re.search(rb"\r(?!\n)|(?<!\r)\n", content) is not None
            # Measured up to the LF, CR included: 999 octets at most.
            tooLong = any(len(segment) > 999 for segment in content.split(b"\n"))
            self.assertEqual(checker.bareLineEnding, bare, (content, bounds))
            self.assertEqual(checker.lineTooLong, tooLong, (content, bounds))
            self.assertEqual(checker.nul, b"\0" in content)

    def test_undottedAfterHeldBytes(self) -> None:
        """
        A chunk without a period after a chunk that ended in part of the
        terminator: the held bytes are passed on, or end the message.
        """
        for chunks, expected in [
            ([b"a\r", b"\nb\r\n"], (b"a\r\nb", None)),
            ([b"a\r\n", b"b\r\n"], (b"a\r\nb", None)),
            ([b"a\r\n.", b"b\r\n"], (b"a\r\nb", None)),
            ([b"a\r\n.", b"\r\nNEXT"], (b"a\r\n", b"NEXT")),
            ([b"a\r\n.\r", b"\nNEXT"], (b"a\r\n", b"NEXT")),
            ([b"a\r\n.\r", b"xNEXT"], (b"a\r\n\rxNEXT", None)),
            ([b"a\r", b"\n", b".", b"\r", b"\n"], (b"a\r\n", b"")),
        ]:
            decoder = DotDecoder()
            out = []
            rest = None
            for chunk in chunks:
                content, rest = decoder.feed(chunk)
                out.append(content)
            # Before the end, a trailing CRLF or CR is held, as it may
            # start the terminator.
            self.assertEqual((b"".join(out), rest), expected, chunks)


class RealConnectionTests(TestCase):
    """smtplib on 127.0.0.1, in a thread, against real listeners."""

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        cert, key = makeCertificate(directory)
        self.options = serverContextFactory(cert, key)
        self.delivery = FakeDeliveryAgent()
        self.authenticator = FakeAuthenticator({"alice@example.test": "secret"})

    def listen(self, role: str, implicit: bool = False) -> int:
        factory = SMTPFactory(
            hostname="localhost",
            role=role,
            delivery=self.delivery,
            authenticator=self.authenticator,
            limits=Limits(),
            tlsOptions=None if implicit else self.options,
            clock=reactor,
        )
        wrapped = TLSMemoryBIOFactory(self.options, False, factory) if implicit else factory
        port = reactor.listenTCP(0, wrapped, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context

    @inlineCallbacks
    def test_startTLSWithSmtplib(self):
        port = self.listen("submission")

        def client() -> Dict[str, object]:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example.org", timeout=10) as smtp:
                smtp.ehlo()
                before = smtp.has_extn("auth")
                smtp.starttls(context=self.context())
                smtp.ehlo()
                after = smtp.has_extn("auth")
                smtp.login("alice@example.test", "secret")
                refused = smtp.sendmail(
                    "alice@example.test", ["bob@example.test"], b"From: alice@example.test\r\nSubject: t\r\n\r\nhello\r\n"
                )
                return {"before": before, "after": after, "refused": refused}

        result = yield deferToThread(client)
        self.assertEqual(result, {"before": False, "after": True, "refused": {}})
        [message] = self.delivery.messages
        self.assertTrue(message.finished)
        self.assertIn(b" with ESMTPSA id ", message.data)
        self.assertTrue(message.data.endswith(b"\r\nSubject: t\r\n\r\nhello\r\n"))

    @inlineCallbacks
    def test_slowStoreOverTLS(self):
        """Input waits for a slow finish() through a TLS transport too."""
        from twisted.internet.task import deferLater

        delivery = self.delivery
        original = delivery.receive

        def receive(returnPath: str, recipients: List[str]):
            receiver = original(returnPath, recipients)
            receiver.finish = lambda: deferLater(reactor, 0.05, lambda: "slow-id")  # type: ignore[method-assign]
            return receiver

        delivery.receive = receive  # type: ignore[method-assign]
        port = self.listen("smtps", implicit=True)

        def client() -> List[object]:
            replies = []
            with smtplib.SMTP_SSL("127.0.0.1", port, local_hostname="client.example.org", context=self.context(), timeout=10) as smtp:
                smtp.ehlo()
                smtp.login("alice@example.test", "secret")
                for n in range(2):
                    smtp.mail("alice@example.test")
                    smtp.rcpt("bob@example.test")
                    replies.append(smtp.data(b"Subject: %d\r\n\r\nx\r\n" % (n,)))
                replies.append(smtp.noop())
            return replies

        replies = yield deferToThread(client)
        self.assertEqual(
            replies, [(250, b"2.0.0 Ok: queued as slow-id"), (250, b"2.0.0 Ok: queued as slow-id"), (250, b"2.0.0 Ok")]
        )

    @inlineCallbacks
    def test_projectClient(self):
        """mailnet's own submission client, over STARTTLS and implicit TLS."""
        from mailnet.client.smtp import sendMessage
        from mailnet.client.tls import ServerEndpoint, TLSMode

        for role, mode in (("submission", TLSMode.starttls), ("smtps", TLSMode.implicit)):
            port = self.listen(role, implicit=mode is TLSMode.implicit)
            endpoint = ServerEndpoint(host="127.0.0.1", port=port, tls=mode, insecure=True, timeout=10)
            result = yield sendMessage(
                reactor,
                endpoint,
                ("alice@example.test", "secret"),
                "alice@example.test",
                ["bob@example.test", "nobody@example.test"],
                b"From: alice@example.test\nSubject: own client\n\n.dot\n",
            )
            self.assertEqual(result.code, 250)
            self.assertEqual([r.code for r in result.recipients], [250, 550])
            self.assertTrue(self.delivery.messages[-1].data.endswith(b"\r\nSubject: own client\r\n\r\n.dot\r\n"))
            self.assertIn(b" with ESMTPSA id ", self.delivery.messages[-1].data)

    def quitAndWaitForClose(self, port: int, implicit: bool) -> Dict[str, object]:
        """
        Over TLS: QUIT, then read to the end of the stream, as openssl
        s_client and MUAs do; how long the end took to come.
        """
        import socket
        import time

        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            if implicit:
                conn = self.context().wrap_socket(raw)
                files = conn.makefile("rb")
            else:
                files = raw.makefile("rb")
                files.readline()
                raw.sendall(b"EHLO client.example.org\r\n")
                while files.readline()[3:4] == b"-":
                    pass
                raw.sendall(b"STARTTLS\r\n")
                files.readline()
                conn = self.context().wrap_socket(raw)
                files = conn.makefile("rb")
                conn.sendall(b"EHLO client.example.org\r\n")
            conn.sendall(b"QUIT\r\n")
            lines = []
            started = time.monotonic()
            while True:
                line = files.readline()
                if not line:
                    break
                lines.append(line)
            return {"last": lines[-1], "seconds": time.monotonic() - started}
        finally:
            raw.close()

    @inlineCallbacks
    def test_quitClosesStartTLSSession(self):
        """After QUIT over STARTTLS the server closes at once (it waited for the idle timeout)."""
        port = self.listen("submission")
        result = yield deferToThread(self.quitAndWaitForClose, port, False)
        self.assertEqual(result["last"], b"221 2.0.0 localhost closing connection\r\n")
        self.assertLess(result["seconds"], 2)

    @inlineCallbacks
    def test_quitClosesImplicitTLSSession(self):
        port = self.listen("smtps", implicit=True)
        result = yield deferToThread(self.quitAndWaitForClose, port, True)
        self.assertEqual(result["last"], b"221 2.0.0 localhost closing connection\r\n")
        self.assertLess(result["seconds"], 2)

    @inlineCallbacks
    def test_implicitTLSWithSmtplib(self):
        port = self.listen("smtps", implicit=True)

        def client() -> object:
            with smtplib.SMTP_SSL("127.0.0.1", port, local_hostname="client.example.org", context=self.context(), timeout=10) as smtp:
                smtp.ehlo()
                smtp.login("alice@example.test", "secret")
                # CHUNKING is used by nobody in smtplib; plain DATA here.
                smtp.sendmail("alice@example.test", ["x@elsewhere.test"], b"Subject: t\r\n\r\n.dot\r\n")
                return smtp.has_extn("starttls")

        startTLS = yield deferToThread(client)
        self.assertFalse(startTLS)
        self.assertTrue(self.delivery.messages[0].data.endswith(b"\r\nSubject: t\r\n\r\n.dot\r\n"))


class TransactionIdTests(SynchronousTestCase):
    def test_shapeAndUniqueness(self) -> None:
        """Twelve upper-case hex digits, different each time, across refills of the random pool."""
        from mailnet.smtp import server

        ids = [server._transactionId() for _ in range(3 * server._RANDOM_READ // 6)]
        self.assertTrue(all(re.fullmatch(r"[0-9A-F]{12}", i) for i in ids))
        self.assertEqual(len(set(ids)), len(ids))
