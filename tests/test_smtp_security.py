# -*- test-case-name: tests.test_smtp_security -*-
"""
Security regression tests for L{mailnet.smtp.server}, each named after the
attack or the RFC rule it pins.
"""

import base64
from typing import List

from twisted.internet.defer import Deferred
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mailnet.config import Limits
from tests.test_smtp_server import Harness

# SMTP smuggling (SEC Consult, December 2023; CVE-2023-51764 Postfix,
# CVE-2023-51765 Sendmail, CVE-2023-51766 Exim): end-of-data markers that
# some receivers accept and others do not.  RFC 5321 §4.1.1.4 allows only
# <CRLF>.<CRLF>.
SMUGGLING_MARKERS = [
    b"\n.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r\n",
    b"\n.\r",
    b"\r\n.\r",
]

SMUGGLED = (
    b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
    b"From: ceo@example.test\r\n\r\nsmuggled\r\n"
)


class SMTPSmugglingTests(SynchronousTestCase):
    """
    SMTP smuggling: a marker other than <CRLF>.<CRLF> never ends the
    message, so what follows it is never run as commands; the message is
    refused for its bare CR/LF at the real end.
    """

    def smuggle(self, marker: bytes, byteByByte: bool = False) -> None:
        h = Harness()
        h.ehlo()
        h.envelope("a@remote.test", "alice@example.test")
        h.command("DATA")
        stream = b"Subject: hello\r\n\r\nhello" + marker + SMUGGLED + b".\r\n"
        if byteByByte:
            replies: List[str] = []
            for i in range(len(stream)):
                replies += h.send(stream[i : i + 1])
        else:
            replies = h.send(stream)
        self.assertEqual(replies, ["550 5.6.0 Message contains a bare CR or LF"], marker)
        self.assertEqual(len(h.delivery.messages), 1, marker)
        self.assertTrue(h.delivery.messages[0].aborted, marker)
        self.assertFalse(h.delivery.messages[0].finished, marker)
        # The session is in command mode again, with no transaction.
        self.assertEqual(h.command("RCPT TO:<bob@example.test>"), ["503 5.5.1 Need MAIL before RCPT"])

    def test_markersInOnePacket(self) -> None:
        for marker in SMUGGLING_MARKERS:
            self.smuggle(marker)

    def test_markersByteByByte(self) -> None:
        for marker in SMUGGLING_MARKERS:
            self.smuggle(marker, byteByByte=True)

    def test_nulBeforeDot(self) -> None:
        """<CRLF>NUL.<CRLF> (for servers that drop NULs) is not an end, and NUL is refused."""
        h = Harness()
        h.ehlo()
        h.envelope()
        h.command("DATA")
        replies = h.send(b"hello\r\n\x00.\r\n" + SMUGGLED + b".\r\n")
        self.assertEqual(replies, ["550 5.6.0 Message contains a NUL octet"])
        self.assertTrue(h.delivery.messages[0].aborted)

    def test_realEndAcrossPackets(self) -> None:
        """<CRLF>.<CRLF> split over packets at every point still ends the message."""
        for cut in range(1, 5):
            h = Harness()
            h.ehlo()
            h.envelope()
            h.command("DATA")
            stream = b"x\r\n.\r\nNOOP\r\n"
            first = h.send(stream[: 1 + cut])
            self.assertEqual(first + h.send(stream[1 + cut :]), ["250 2.0.0 Ok: queued as test-id", "250 2.0.0 Ok"])
            self.assertTrue(h.delivery.messages[0].data.endswith(b"\r\nx\r\n"))

    def test_bdatIsLengthCounted(self) -> None:
        """RFC 3030: in BDAT, <CRLF>.<CRLF> is data, not an end."""
        h = Harness()
        h.ehlo()
        h.envelope()
        chunk = b"a\r\n.\r\nQUIT\r\n"
        self.assertEqual(h.send(b"BDAT %d LAST\r\n%s" % (len(chunk), chunk)), ["250 2.0.0 Ok: queued as test-id"])
        self.assertTrue(h.delivery.messages[0].data.endswith(b"\r\na\r\n.\r\nQUIT\r\n"))
        self.assertFalse(h.transport.disconnecting)


class STARTTLSInjectionTests(SynchronousTestCase):
    """
    CVE-2011-0411 (STARTTLS plaintext command injection) and RFC 3207 §4.2:
    nothing sent before the handshake is acted on after it.
    """

    def test_pipelinedAfterSTARTTLSDiscarded(self) -> None:
        h = Harness(tls=True)
        h.ehlo()
        replies = h.send(b"STARTTLS\r\nMAIL FROM:<evil@remote.test>\r\nRCPT TO:<alice@example.test>\r\n")
        self.assertEqual(replies, ["220 2.0.0 Ready to start TLS"])
        h.ehlo()
        self.assertEqual(h.command("RCPT TO:<alice@example.test>"), ["503 5.5.1 Need MAIL before RCPT"])

    def test_partialLineDiscarded(self) -> None:
        h = Harness(tls=True)
        h.ehlo()
        h.send(b"STARTTLS\r\nNO")
        self.assertEqual(h.command("OP"), ["500 5.5.1 Command unrecognized"])

    def test_stateForgotten(self) -> None:
        """RFC 3207 §4.2: EHLO, transaction and login are all forgotten."""
        h = Harness(tls=True, allowPlaintextAuth=True)
        h.ehlo()
        token = base64.b64encode(b"\0alice@example.test\0secret").decode()
        self.assertEqual(h.command("AUTH PLAIN " + token), ["235 2.7.0 Authentication successful"])
        h.command("STARTTLS")
        self.assertIsNone(h.protocol._sender)
        self.assertEqual(h.command("MAIL FROM:<alice@example.test>"), ["503 5.5.1 Send EHLO or HELO first"])
        h.ehlo()
        h.command("MAIL FROM:<a@remote.test>")
        self.assertEqual(h.command("RCPT TO:<x@elsewhere.test>"), ["554 5.7.1 <x@elsewhere.test>: relay access denied"])


class LongLineTests(SynchronousTestCase):
    """RFC 5321 §4.5.3.1.4 (command lines) and memory exhaustion."""

    def test_oneReplyPerLongLine(self) -> None:
        """A 100 kB command line gets one 500 5.5.2, however it arrives."""
        h = Harness()
        replies: List[str] = []
        for _ in range(100):
            replies += h.send(b"X" * 1024)
            self.assertLessEqual(len(h.protocol._buffer), 2048)
        replies += h.send(b"\r\nNOOP\r\n")
        self.assertEqual(replies, ["500 5.5.2 line too long", "250 2.0.0 Ok"])

    def test_longLineInOnePacket(self) -> None:
        h = Harness()
        self.assertEqual(h.send(b"NOOP " + b"x" * 5000 + b"\r\nNOOP\r\n"), ["500 5.5.2 line too long", "250 2.0.0 Ok"])

    def test_limitCountsCRLF(self) -> None:
        h = Harness(limits=Limits(max_command_line=10))
        self.assertEqual(h.send(b"NOOP 1234\r\n"), ["500 5.5.2 line too long"])
        self.assertEqual(h.send(b"NOOP 123\r\n"), ["250 2.0.0 Ok"])

    def test_authLineLimit(self) -> None:
        """RFC 4954 §4: AUTH responses may be 12288 octets; longer is 500 5.5.6."""
        h = Harness(role="smtps")
        h.ehlo()
        h.command("AUTH PLAIN")
        self.assertEqual(h.send(b"A" * 12288), ["500 5.5.6 line too long"])
        h.send(b"AAAA\r\n")
        token = base64.b64encode(b"\0alice@example.test\0" + b"p" * 5000).decode()
        h.command("AUTH PLAIN")
        self.assertEqual(h.command(token), ["535 5.7.8 Authentication credentials invalid"])

    def test_hugeDataLineBoundedMemory(self) -> None:
        """A 16 MB line in DATA: nothing kept but the chunk; refused at the end."""
        h = Harness(limits=Limits(max_message_size=64 * 1024 * 1024))
        h.ehlo()
        h.envelope()
        h.command("DATA")
        chunk = b"A" * 65536
        for _ in range(256):
            self.assertEqual(h.send(chunk), [])
            self.assertEqual(h.protocol._buffer, b"")
            transaction = h.protocol._transaction
            self.assertLessEqual(len(transaction.decoder._held), 2)
            self.assertLessEqual(sum(map(len, transaction.headers._partial)), 102400)
        self.assertEqual(h.send(b"\r\n.\r\n"), ["550 5.6.0 Message has a line longer than 1000 octets"])
        self.assertTrue(h.delivery.messages[0].aborted)

    def test_headerSectionBounded(self) -> None:
        """At most 100 kB of header section is held (to check it), on every port."""
        h = Harness(role="submission", allowPlaintextAuth=True)
        h.ehlo()
        h.command("AUTH PLAIN " + base64.b64encode(b"\0alice@example.test\0secret").decode())
        h.envelope("alice@example.test", "bob@example.test")
        h.command("DATA")
        for _ in range(200):
            h.send(b"X-Filler: " + b"x" * 900 + b"\r\n")
        self.assertLessEqual(sum(map(len, h.protocol._transaction.headers._held)), 102400)
        self.assertEqual(
            h.send(b"From: bob@example.test\r\n\r\nx\r\n.\r\n"), ["552 5.3.4 Header section too large"]
        )


class HostileCommandTests(SynchronousTestCase):
    """Binary, NUL and non-ASCII in commands (RFC 5321 §2.4)."""

    def test_nul(self) -> None:
        h = Harness()
        h.ehlo()
        self.assertEqual(h.send(b"NOOP\x00\r\n"), ["500 5.5.2 Control characters or NUL in command"])
        self.assertEqual(h.send(b"MAIL FROM:<a\x00b@remote.test>\r\n"), ["500 5.5.2 Control characters or NUL in command"])
        self.assertEqual(h.command("NOOP"), ["250 2.0.0 Ok"])

    def test_binary(self) -> None:
        h = Harness()
        self.assertEqual(h.send(b"\xff\xfe\xfd\r\n"), ["500 5.5.2 Command is not ASCII or UTF-8"])
        self.assertEqual(h.send(b"EHLO caf\xc3\xa9.test\r\n"), ["500 5.5.2 Non-ASCII characters in command"])
        self.assertEqual(h.command("NOOP"), ["250 2.0.0 Ok"])

    def test_bareCRInCommand(self) -> None:
        """A CR inside a line is not a line ending and not allowed."""
        h = Harness()
        self.assertEqual(h.send(b"NOOP\rQUIT\r\n"), ["500 5.5.2 Control characters or NUL in command"])
        self.assertFalse(h.transport.disconnecting)

    def test_heloCannotInjectHeaders(self) -> None:
        """The HELO name goes into Received: it must be a host name."""
        h = Harness()
        self.assertEqual(h.send(b"HELO a\tX-Injected: yes\r\n"), ["500 5.5.2 Control characters or NUL in command"])
        self.assertEqual(h.command("HELO a.test(x)"), ["501 5.5.4 Syntax: EHLO <domain or address literal>"])

    def test_hugeSize(self) -> None:
        h = Harness()
        h.ehlo()
        self.assertEqual(h.command("MAIL FROM:<a@remote.test> SIZE=" + "9" * 21), ["501 5.5.4 Syntax: SIZE=<octets>"])
        self.assertEqual(h.command("MAIL FROM:<a@remote.test> SIZE=" + "9" * 20)[0][:9], "552 5.3.4")


class ErrorLimitTests(SynchronousTestCase):
    """Clients that only make mistakes (scanners, password guessers) are cut off."""

    def test_tooManyErrors(self) -> None:
        h = Harness(limits=Limits(max_errors=3))
        replies = h.send(b"A\r\nB\r\nC\r\nD\r\n")
        self.assertEqual(replies, ["500 5.5.1 Command unrecognized"] * 3 + ["421 4.7.0 too many errors"])
        self.assertTrue(h.transport.disconnecting)

    def test_passwordGuessing(self) -> None:
        h = Harness(role="smtps", limits=Limits(max_errors=2))
        h.ehlo()
        bad = base64.b64encode(b"\0alice@example.test\0guess").decode()
        self.assertEqual(h.command("AUTH PLAIN " + bad), ["535 5.7.8 Authentication credentials invalid"])
        self.assertEqual(
            h.command("AUTH PLAIN " + bad), ["535 5.7.8 Authentication credentials invalid", "421 4.7.0 too many errors"]
        )

    def test_junkCommands(self) -> None:
        """Endless NOOPs (Postfix's junk command limit) count as errors past 100."""
        h = Harness(limits=Limits(max_errors=5))
        replies = h.send(b"NOOP\r\n" * 120)
        self.assertEqual(replies[-1], "421 4.7.0 too many errors")
        self.assertEqual(len(replies), 106)


class ReplyFloodTests(SynchronousTestCase):
    """
    A client that pipelines commands but never reads the replies must not
    make the server buffer replies (or input) without bound.
    """

    def test_registeredAsProducer(self) -> None:
        h = Harness()
        self.assertIs(h.transport.producer, h.protocol)
        self.assertTrue(h.transport.streaming)

    def test_stopsWhenOutputBlocked(self) -> None:
        h = Harness()
        h.protocol.pauseProducing()  # the transport's write buffer is full
        self.assertEqual(h.send(b"NOOP\r\n"), [])
        self.assertEqual(h.transport.producerState, "producing")
        h.send(b"NOOP\r\n" * 20000)
        # Too much unread input: stop reading the socket too.
        self.assertEqual(h.transport.producerState, "paused")
        h.protocol.resumeProducing()
        self.assertEqual(h.transport.producerState, "producing")
        replies = h.take()
        self.assertEqual(replies[:2], ["250 2.0.0 Ok", "250 2.0.0 Ok"])

    def test_duplicateRecipientsCount(self) -> None:
        """RCPT of the same address over and over still meets the limit."""
        h = Harness(limits=Limits(max_recipients=3))
        h.ehlo()
        h.command("MAIL FROM:<a@remote.test>")
        replies = h.send(b"RCPT TO:<alice@example.test>\r\n" * 4)
        self.assertEqual(replies[-1], "452 4.5.3 Too many recipients")


class SlowlorisTests(SynchronousTestCase):
    """A client trickling bytes must not hold a connection for ever."""

    def test_trickledCommand(self) -> None:
        """One byte a second never completing a line: 421 after command_timeout."""
        h = Harness(limits=Limits(idle_timeout=60, command_timeout=100))
        for _ in range(99):
            h.send(b"N")
            h.clock.advance(1)
        self.assertFalse(h.transport.disconnecting)
        h.send(b"N")
        h.clock.advance(1)
        self.assertEqual(h.take(), ["421 4.4.2 mx.example.test idle timeout"])
        self.assertTrue(h.transport.disconnecting)

    def test_deadlineClosesOnce(self) -> None:
        """
        A connection the command deadline closes is not timed out again
        later by its idle timer: one log line, no timer left.
        """
        events: List[str] = []

        def observe(event: dict) -> None:
            events.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        h = Harness(limits=Limits(idle_timeout=60, command_timeout=10))
        h.send(b"NO")
        h.clock.advance(10)
        self.assertEqual(h.take(), ["421 4.4.2 mx.example.test idle timeout"])
        h.clock.advance(100)
        closing = [e for e in events if "closing" in e]
        self.assertEqual(closing, ["SMTP 192.0.2.7: command not completed in time, closing"])
        self.assertEqual([c for c in h.clock.getDelayedCalls() if c.func != h.transport.abortConnection], [])

    def test_deadlineRestartsPerCommand(self) -> None:
        h = Harness(limits=Limits(idle_timeout=60, command_timeout=10))
        for _ in range(5):
            h.send(b"NO")
            h.clock.advance(8)
            self.assertEqual(h.send(b"OP\r\n"), ["250 2.0.0 Ok"])
        self.assertFalse(h.transport.disconnecting)

    def test_trickledData(self) -> None:
        """DATA at 1 octet/s is cut off after command_timeout."""
        h = Harness(limits=Limits(idle_timeout=60, command_timeout=100))
        h.ehlo()
        h.envelope()
        h.command("DATA")
        for _ in range(100):
            h.send(b"x")
            h.clock.advance(1)
        self.assertEqual(h.take(), ["421 4.4.2 mx.example.test idle timeout"])
        self.assertTrue(h.delivery.messages[0].aborted)

    def test_slowButSteadyData(self) -> None:
        """A long DATA phase that keeps bringing data is not cut."""
        h = Harness(limits=Limits(idle_timeout=60, command_timeout=100))
        h.ehlo()
        h.envelope()
        h.command("DATA")
        for _ in range(1000):
            h.send(b"y" * 40 + b"\r\n")
            h.clock.advance(1)
        self.assertEqual(h.send(b".\r\n"), ["250 2.0.0 Ok: queued as test-id"])

    def test_noIdleTimeoutWhileAwaited(self) -> None:
        """
        A reply awaited longer than idle_timeout (a slow store) does not
        time the client out; the idle timeout starts again in full once the
        reply is written.
        """
        h = Harness(limits=Limits(idle_timeout=60, command_timeout=100))
        slow: Deferred = Deferred()
        original = h.delivery.receive

        def receive(returnPath: str, recipients: List[str]):
            receiver = original(returnPath, recipients)
            receiver.finish = lambda: slow  # type: ignore[method-assign]
            return receiver

        h.delivery.receive = receive  # type: ignore[method-assign]
        h.ehlo()
        h.envelope()
        h.command("DATA")
        self.assertEqual(h.send(b"Subject: x\r\n\r\nbody\r\n.\r\n"), [])
        h.clock.advance(250)
        self.assertEqual(h.take(), [])
        self.assertFalse(h.transport.disconnecting)
        slow.callback("slow-id")
        self.assertEqual(h.take(), ["250 2.0.0 Ok: queued as slow-id"])
        h.clock.advance(59)
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(1)
        self.assertEqual(h.take(), ["421 4.4.2 mx.example.test idle timeout"])
        self.assertTrue(h.transport.disconnecting)

    def test_deadlineAfterMessages(self) -> None:
        """
        After messages, a trickled command still gets exactly
        command_timeout, counted from its first octet.
        """
        h = Harness(limits=Limits(idle_timeout=1000, command_timeout=100))
        h.ehlo()
        for _ in range(3):
            h.envelope()
            h.command("DATA")
            h.send(b"Subject: x\r\n")
            h.clock.advance(50)
            self.assertEqual(h.send(b"\r\nbody\r\n.\r\n"), ["250 2.0.0 Ok: queued as test-id"])
        h.clock.advance(70)
        h.send(b"NO")
        h.clock.advance(99)
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(1)
        self.assertEqual(h.take(), ["421 4.4.2 mx.example.test idle timeout"])
        self.assertTrue(h.transport.disconnecting)


class FuzzTests(SynchronousTestCase):
    """
    Random fragments of commands, data and binary, cut anywhere: the
    server never raises and only ever writes well-formed replies.
    """

    FRAGMENTS = [
        b"EHLO client.example.org\r\n",
        b"HELO x\r\n",
        b"MAIL FROM:<a@remote.test>\r\n",
        b"MAIL FROM:<a@remote.test> SIZE=10 BODY=8BITMIME SMTPUTF8\r\n",
        b"RCPT TO:<alice@example.test>\r\n",
        b"RCPT TO:<x@elsewhere.test>\r\n",
        b"DATA\r\n",
        b"BDAT 5\r\n",
        b"BDAT 0 LAST\r\n",
        b"BDAT 99999999999 LAST\r\n",
        b"AUTH PLAIN\r\n",
        b"AUTH LOGIN\r\n",
        b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=\r\n",
        b"*\r\n",
        b"STARTTLS\r\n",
        b"RSET\r\n",
        b"\r\n.\r\n",
        b".\r\n",
        b"\n.\n",
        b"\x00\xff\xfe",
        b"\r",
        b"\n",
        b"x" * 3000,
        b"\xc3\xa9",
        b"QUIT\r\n",
    ]

    def test_fuzz(self) -> None:
        import random
        import re

        rng = random.Random(2920)
        wellFormed = re.compile(r"\A[2-5][0-9][0-9][ -]")
        for role in ("mta", "submission", "smtps"):
            for _ in range(150):
                h = Harness(role=role, tls=True, allowPlaintextAuth=True, limits=Limits(max_errors=1000))
                stream = b"".join(rng.choice(self.FRAGMENTS) for _ in range(rng.randint(1, 25)))
                cuts = sorted(rng.randint(0, len(stream)) for _ in range(rng.randint(0, 6)))
                start = 0
                for cut in cuts + [len(stream)]:
                    for line in h.send(stream[start:cut]):
                        self.assertRegex(line, wellFormed, stream)
                    start = cut
                h.clock.advance(1000)
                h.disconnect()
                self.assertEqual(h.clock.getDelayedCalls(), [])
                self.assertEqual(h.factory.connections, 0)
                # Every message started was either stored or thrown away.
                for message in h.delivery.messages:
                    self.assertTrue(message.finished != message.aborted, stream)
        self.assertEqual(self.flushLoggedErrors(), [])


class SecretsTests(SynchronousTestCase):
    """Passwords are never logged (RFC 4954 §14: protect credentials)."""

    def test_passwordsNotLogged(self) -> None:
        events: List[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = Harness(role="smtps", limits=Limits(max_errors=100))
        h.ehlo()
        for password in (b"sup3r-s3cret-A", b"secret"):
            token = base64.b64encode(b"\0alice@example.test\0" + password).decode()
            h.command("AUTH PLAIN " + token)
        h.disconnect()
        h = Harness(role="smtps")
        h.ehlo()
        h.command("AUTH LOGIN")
        h.command(base64.b64encode(b"alice@example.test").decode())
        h.command(base64.b64encode(b"sup3r-s3cret-B").decode())
        text = "\n".join(formatEvent(e) + repr(e) for e in events)
        self.assertIn("authentication failed", text)
        for secret in ("sup3r-s3cret", "c3VwM3ItczNjcmV0", "AHN1cDNy"):
            self.assertNotIn(secret, text)


def _message(h: Harness, data: bytes) -> List[str]:
    """Send C{data} (CRLF lines, not dot-stuffed) as DATA; the replies."""
    h.command("DATA")
    return h.send(data + b".\r\n")


def _received(n: int) -> bytes:
    return b"".join(b"Received: from hop%d.test by hop%d.test; Thu, 1 Jan 2026 00:00:00 +0000\r\n" % (i, i + 1) for i in range(n))


class MailLoopTests(SynchronousTestCase):
    """
    RFC 5321 §6.3: a message that went round a loop (too many Received:
    fields, or a Delivered-To: for an address it is sent to again) is
    refused with 554 5.4.6 on every port, and nothing of it is stored.
    """

    def test_tooManyHops(self) -> None:
        for role in ("mta", "submission", "smtps"):
            h = Harness(role=role, allowPlaintextAuth=True)
            h.ehlo()
            sender = "someone@remote.test"
            if role != "mta":
                h.login()
                sender = "alice@example.test"
            h.envelope(sender, "bob@example.test")
            replies = _message(h, _received(150) + b"From: alice@example.test\r\n\r\nloop\r\n")
            self.assertEqual(replies, ["554 5.4.6 Too many hops (150 Received: header fields): mail loop?"], role)
            self.assertTrue(h.delivery.messages[0].aborted, role)
            self.assertFalse(h.delivery.messages[0].finished, role)
            # Nothing of the message was written but our own Received: field.
            self.assertNotIn(b"hop1.test", h.delivery.messages[0].data, role)
            # The session goes on.
            h.envelope(sender, "bob@example.test")

    def test_hopLimitSetting(self) -> None:
        """[limits] max_hops: that many Received: fields are refused, one fewer is not."""
        h = Harness(limits=Limits(max_hops=3))
        h.ehlo()
        h.envelope()
        self.assertEqual(_message(h, _received(2) + b"\r\nok\r\n"), ["250 2.0.0 Ok: queued as test-id"])
        h.envelope()
        self.assertEqual(_message(h, _received(3) + b"\r\nloop\r\n")[0][:9], "554 5.4.6")

    def test_hopsCountedInHeaderOnly(self) -> None:
        """
        A bounce quotes the looping message's header in its body: those
        Received: lines are not hops, so the bounce itself gets through.
        """
        h = Harness(limits=Limits(max_hops=3))
        h.ehlo()
        h.envelope("", "alice@example.test")
        replies = _message(h, b"Subject: bounce\r\n\r\n" + _received(10))
        self.assertEqual(replies, ["250 2.0.0 Ok: queued as test-id"])

    def test_hopsAcrossChunks(self) -> None:
        """The header section may arrive a byte at a time (or in BDAT chunks)."""
        h = Harness(limits=Limits(max_hops=5))
        h.ehlo()
        h.envelope()
        data = _received(5) + b"\r\nloop\r\n"
        h.command("BDAT %d" % (len(data) - 10,))
        replies: List[str] = []
        for i in range(len(data) - 10):
            replies += h.send(data[i : i + 1])
        self.assertEqual(replies, ["250 2.0.0 %d octets received" % (len(data) - 10,)])
        self.assertEqual(h.send(b"BDAT 10 LAST\r\n" + data[-10:])[0][:9], "554 5.4.6")
        self.assertTrue(h.delivery.messages[0].aborted)

    def test_deliveredToLoop(self) -> None:
        """A message that carries Delivered-To: for a recipient has been here before."""
        h = Harness()
        h.ehlo()
        h.envelope("someone@remote.test", "bob@example.test", "alice@example.test")
        replies = _message(h, b"Delivered-To: Alice@Example.test\r\nSubject: x\r\n\r\nloop\r\n")
        self.assertEqual(replies, ["554 5.4.6 Mail forwarding loop for <alice@example.test>"])
        self.assertTrue(h.delivery.messages[0].aborted)

    def test_deliveredToOtherAddress(self) -> None:
        h = Harness()
        h.ehlo()
        h.envelope("someone@remote.test", "alice@example.test")
        replies = _message(h, b"Delivered-To: carol@elsewhere.test\r\n\r\nfine\r\n")
        self.assertEqual(replies, ["250 2.0.0 Ok: queued as test-id"])

    def test_headerSizeCapOnMTA(self) -> None:
        """The header-section cap applies without authentication too."""
        h = Harness()
        h.ehlo()
        h.envelope()
        h.command("DATA")
        for _ in range(120):
            h.send(b"X-Filler: " + b"x" * 900 + b"\r\n")
        self.assertEqual(h.send(b"\r\nbody\r\n.\r\n"), ["552 5.3.4 Header section too large"])
        self.assertTrue(h.delivery.messages[0].aborted)


class DroppedHeaderTests(SynchronousTestCase):
    """
    Return-Path: is written by the delivering MTA (RFC 5321 §4.4) and Bcc:
    must not reach recipients: a client's own are dropped on arrival, on
    every port, however the data is cut into packets.
    """

    MESSAGE = (
        b"Return-Path: <ceo@bank.test>\r\n"
        b"From: alice@example.test\r\n"
        b"bcc: secret@example.test,\r\n"
        b"  other-secret@example.test\r\n"
        b"Subject: hi\r\n"
        b"Resent-Bcc: x@y.test\r\n"
        b"\r\n"
        b"Return-Path: in the body stays\r\n"
    )

    def check(self, data: bytes) -> None:
        self.assertNotIn(b"ceo@bank.test", data)
        self.assertNotIn(b"secret@", data)
        self.assertNotIn(b"x@y.test", data)
        self.assertIn(b"From: alice@example.test\r\nSubject: hi\r\n\r\nReturn-Path: in the body stays\r\n", data)

    def test_allPorts(self) -> None:
        for role in ("mta", "submission", "smtps"):
            h = Harness(role=role, allowPlaintextAuth=True)
            h.ehlo()
            if role != "mta":
                h.login()
            h.envelope("alice@example.test", "bob@example.test")
            self.assertEqual(_message(h, self.MESSAGE), ["250 2.0.0 Ok: queued as test-id"], role)
            self.check(h.delivery.messages[0].data)

    def test_byteByByte(self) -> None:
        h = Harness()
        h.ehlo()
        h.envelope("alice@example.test", "bob@example.test")
        h.command("DATA")
        stream = self.MESSAGE + b".\r\n"
        replies: List[str] = []
        for i in range(len(stream)):
            replies += h.send(stream[i : i + 1])
        self.assertEqual(replies, ["250 2.0.0 Ok: queued as test-id"])
        self.check(h.delivery.messages[0].data)

    def test_bdat(self) -> None:
        h = Harness()
        h.ehlo()
        h.envelope("alice@example.test", "bob@example.test")
        first, second = self.MESSAGE[:40], self.MESSAGE[40:]
        self.assertEqual(h.send(b"BDAT %d\r\n" % (len(first),) + first)[0][:3], "250")
        self.assertEqual(h.send(b"BDAT %d LAST\r\n" % (len(second),) + second), ["250 2.0.0 Ok: queued as test-id"])
        self.check(h.delivery.messages[0].data)

    def test_headerOnlyMessage(self) -> None:
        """No blank line, no body: the fields are still filtered."""
        h = Harness()
        h.ehlo()
        h.envelope()
        data = b"Subject: a\r\nBcc: hidden@example.test"
        self.assertEqual(h.send(b"BDAT %d LAST\r\n" % (len(data),) + data), ["250 2.0.0 Ok: queued as test-id"])
        data = h.delivery.messages[0].data
        self.assertTrue(data.endswith(b"Subject: a\r\n"), data)


class FromHeaderTests(SynchronousTestCase):
    """
    The submission From: check reads the header section as RFC 5322 does
    (obs-from "From :" and "From<TAB>:" are From fields), refuses a line
    that is no field, and is bounded: no input can crash it or leave the
    transaction half-open.
    """

    def submit(self, header: bytes) -> List[str]:
        h = self.h = Harness(role="submission", allowPlaintextAuth=True)
        h.ehlo()
        h.login()
        h.envelope("alice@example.test", "bob@example.test")
        return _message(h, header + b"\r\nbody\r\n")

    def test_obsoleteFrom(self) -> None:
        for field in (b"From : bob@example.test\r\n", b"From\t: bob@example.test\r\n", b"FROM  \t : bob@example.test\r\n"):
            self.assertEqual(self.submit(field), ["553 5.7.1 From: <bob@example.test> is not yours to send as"], field)
            self.assertTrue(self.h.delivery.messages[0].aborted)

    def test_secondFromField(self) -> None:
        replies = self.submit(b"From: alice@example.test\r\nFrom : bob@example.test\r\n")
        self.assertEqual(replies, ["553 5.7.1 From: <bob@example.test> is not yours to send as"])

    def test_ownFromPasses(self) -> None:
        self.assertEqual(self.submit(b"From : Alice <alice@example.test>\r\n"), ["250 2.0.0 Ok: queued as test-id"])

    def test_notAFieldRefused(self) -> None:
        for line in (b"From bob@example.test Sat Dec  5 2026\r\n", b"no colon here\r\n", b" starts folded\r\n"):
            replies = self.submit(b"From: alice@example.test\r\n" + line if line[:1] != b" " else line)
            self.assertEqual(
                replies,
                ["550 5.6.0 Header section has a line that is neither a header field nor a continuation"],
                line,
            )

    def test_nestedComments(self) -> None:
        """900 nested comments: refused, and the next transaction works."""
        replies = self.submit(b"From: " + (b"(" * 300 + b"\r\n ") * 3 + b"alice@example.test\r\n")
        self.assertEqual(replies, ["550 5.6.0 From: cannot be read: comments nested more than 16 deep"])
        self.assertEqual(self.h.command("MAIL FROM:<alice@example.test>"), ["250 2.1.0 Sender <alice@example.test> ok"])

    def test_nestedGroups(self) -> None:
        # Folded, so that no line is over 1000 octets.
        replies = self.submit(b"From: " + (b"g:" * 300 + b"\r\n ") * 4 + b"alice@example.test;\r\n")
        self.assertEqual(replies, ["553 5.7.1 From: <> is not yours to send as"])
        self.assertEqual(self.h.command("MAIL FROM:<alice@example.test>"), ["250 2.1.0 Sender <alice@example.test> ok"])

    def test_checkErrorEndsTransaction(self) -> None:
        """Any unexpected error in a check: 451, and the session is ready for MAIL."""
        h = Harness()
        h.ehlo()
        h.envelope()

        def broken(*args: object) -> None:
            raise RuntimeError("bug")

        h.protocol._headerRefusal = broken  # type: ignore[method-assign]
        self.assertEqual(_message(h, b"Subject: x\r\n\r\nbody\r\n"), ["451 4.3.0 Local error in processing, try again later"])
        self.assertTrue(h.delivery.messages[0].aborted)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(h.command("MAIL FROM:<a@remote.test>"), ["250 2.1.0 Sender <a@remote.test> ok"])


    def test_readErrorEndsTransaction(self) -> None:
        """An error while the header section streams in: 451 at the end, nothing stored."""
        h = Harness()
        h.ehlo()
        h.envelope()
        h.command("DATA")

        def broken(data: bytes) -> bytes:
            raise RuntimeError("bug")

        h.protocol._transaction.headers.feed = broken  # type: ignore[union-attr, method-assign]
        self.assertEqual(h.send(b"Subject: x\r\n\r\nbody\r\n.\r\n"), ["451 4.3.0 Local error in processing, try again later"])
        self.assertTrue(h.delivery.messages[0].aborted)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(h.command("MAIL FROM:<a@remote.test>"), ["250 2.1.0 Sender <a@remote.test> ok"])


class RecipientOvershootTests(SynchronousTestCase):
    """
    RFC 5321 §4.5.3.1.10: 452 for recipients past max_recipients is a
    signal to send the rest later, not a client error: a client that
    pipelines a long list can finish the transaction.
    """

    def test_pipelinedListFinishes(self) -> None:
        h = Harness(limits=Limits(max_recipients=200, max_errors=20))
        h.ehlo()
        h.delivery.users.update("user%d@example.test" % (i,) for i in range(300))
        commands = b"MAIL FROM:<list@remote.test>\r\n"
        commands += b"".join(b"RCPT TO:<user%d@example.test>\r\n" % (i,) for i in range(300))
        commands += b"DATA\r\n"
        replies = h.send(commands)
        self.assertEqual(replies.count("250 2.1.5 Recipient <user0@example.test> ok"), 1)
        self.assertEqual(len([r for r in replies if r.startswith("250 2.1.5")]), 200)
        self.assertEqual(replies.count("452 4.5.3 Too many recipients"), 100)
        self.assertEqual(replies[-1], "354 End data with <CR><LF>.<CR><LF>")
        self.assertEqual(h.send(b"Subject: list\r\n\r\nhi\r\n.\r\n"), ["250 2.0.0 Ok: queued as test-id"])
        self.assertEqual(len(h.delivery.messages[0].recipients), 200)

    def test_overshootLimit(self) -> None:
        """Far past the limit (1000 more), the 452s do count as errors."""
        h = Harness(limits=Limits(max_recipients=1, max_errors=5))
        h.ehlo()
        h.envelope()
        replies = h.send(b"RCPT TO:<bob@example.test>\r\n" * 1010)
        self.assertEqual(replies[-1], "421 4.7.0 too many errors")
        self.assertEqual(len(replies), 1006)


class NetworkTextTests(SynchronousTestCase):
    """
    What a client sends is escaped before it reaches the log, and cannot
    break the structure of the Received: field we write.
    """

    def test_logEscaped(self) -> None:
        """A UTF-8 envelope address with C1 controls and a direction override."""
        events: List[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = Harness()
        h.ehlo()
        h.delivery.users.add("bob\u202e@example.test")
        h.command("MAIL FROM:<evil\u009b2J@remote.test> SMTPUTF8")
        h.command("RCPT TO:<nobody\u202e@example.test>")
        h.command("RCPT TO:<bob\u202e@example.test>")
        h.command("DATA")
        h.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn("from <evil\\x9b2j@remote.test>", text)
        self.assertIn("nobody\\u202e@example.test", text)
        self.assertIn("to bob\\u202e@example.test", text)
        for raw in ("\u009b", "\u202e"):
            self.assertNotIn(raw, text)

    def test_ipv6ZoneIdRefused(self) -> None:
        """RFC 5321 §4.1.3 address literals have no zone id (which may hold any text)."""
        h = Harness()
        for name in ("[IPv6:fe80::1%eth0]", "[IPv6:fe80::1%x;(y)]"):
            self.assertEqual(h.command("EHLO " + name), ["501 5.5.4 Syntax: EHLO <domain or address literal>"], name)
        self.assertTrue(h.command("EHLO [IPv6:fe80::1]")[0].startswith("250-"))

    def test_receivedStructure(self) -> None:
        """Received: from <name> ([address literal]) by ...; date (RFC 5321 §4.4)."""
        from mailnet.smtp.server import _tcpInfo

        self.assertEqual(_tcpInfo("192.0.2.7"), "[192.0.2.7]")
        self.assertEqual(_tcpInfo("fe80::1%eth0;(x)"), "[IPv6:fe80::1]")
        self.assertEqual(_tcpInfo("/tmp/socket (x);"), "[unknown]")
        h = Harness()
        h.command("EHLO [IPv6:2001:db8::1]")
        h.envelope()
        _message(h, b"Subject: x\r\n\r\nx\r\n")
        first = h.delivery.messages[0].data.split(b"\r\n")[0]
        self.assertEqual(first, b"Received: from [IPv6:2001:db8::1] ([192.0.2.7])")


class HeaderSectionChunkingTests(SynchronousTestCase):
    """
    However the data is cut (TCP packets, BDAT chunks), the header section
    is read the same: the filtered bytes and every finding.
    """

    LINES = [
        b"Received: from a.test\r\n",
        b"\tby b.test; Thu, 1 Jan 2026 00:00:00 +0000\r\n",
        b"From : Alice <alice@example.test>\r\n",
        b"FROM\t:bob@example.test\r\n",
        b" (folded comment)\r\n",
        b"Return-Path: <ceo@bank.test>\r\n",
        b"BCC: hidden@example.test\r\n",
        b"Delivered-To: loop@example.test\r\n",
        b"Subject: hello\r\n",
        b"X-Long: " + b"x" * 300 + b"\r\n",
        b"not a field\r\n",
        b"\r\n",
        b"body\r\n",
    ]

    def read(self, data: bytes, cuts: List[int]) -> tuple:
        from mailnet.smtp._data import HeaderSection

        section = HeaderSection()
        out = []
        last = 0
        for cut in cuts + [len(data)]:
            out.append(section.feed(data[last:cut]))
            last = cut
        out.append(section.finish())
        return (
            b"".join(out),
            section.received,
            sorted(section.deliveredTo),
            section.fromFields,
            section.malformed,
        )

    def test_randomCuts(self) -> None:
        import random

        rng = random.Random(11)
        for _ in range(300):
            data = b"".join(rng.choice(self.LINES) for _ in range(rng.randrange(0, 12)))
            if rng.random() < 0.3:
                data = data[: rng.randrange(0, len(data) + 1)]  # no final line ending
            whole = self.read(data, [])
            for _ in range(5):
                cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randrange(0, 8))))
                self.assertEqual(self.read(data, cuts), whole, (data, cuts))
            byteByByte = self.read(data, list(range(1, len(data))))
            self.assertEqual(byteByByte, whole, data)
            if not whole[4] and not data.startswith((b"\t", b" ", b"\r\n")):
                # A well-formed section: none of the dropped fields is left in it.
                head = (b"\r\n" + whole[0]).split(b"\r\n\r\n")[0]
                self.assertNotIn(b"ceo@bank.test", head)
                self.assertNotIn(b"hidden@", head)


class HeaderSectionLimitTests(SynchronousTestCase):
    """The header-section cap is exact, however the data arrives."""

    def test_limitInOneChunk(self) -> None:
        from mailnet.smtp._data import HeaderSection

        field = b"X-F: " + b"x" * 93 + b"\r\n"  # 100 octets
        for count, tooLarge in ((10, False), (11, True)):
            data = field * count + b"\r\nbody\r\n"
            for cuts in ([len(data)], list(range(1, len(data) + 1, 7))):
                section = HeaderSection(limit=1000)
                last, out = 0, []
                for cut in cuts + [len(data)]:
                    out.append(section.feed(data[last:cut]))
                    last = cut
                out.append(section.finish())
                self.assertEqual(section.tooLarge, tooLarge, (count, len(cuts)))
                self.assertEqual(b"".join(out), b"" if tooLarge else data)
