"""
Security regressions of the IMAP server, each naming the attack or the
rule it pins: hostile input gets a clean NO/BAD or a close, never a
traceback, unbounded memory or a stall.
"""

import base64

from mailnet.imap.server import MAX_PENDING_INPUT

from tests.test_imap_server import MESSAGE, IMAPTestCase


class HostileInputTests(IMAPTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.account.deliver(MESSAGE)
        self.select()

    def test_deepNesting(self) -> None:
        """10,000 nested parentheses: BAD, and the session goes on."""
        out = self.send(b"a FETCH 1 " + b"(" * 10000 + b")" * 10000 + b"\r\n")
        self.assertEqual(out, b"a BAD Too deeply nested\r\n")
        self.assertEqual(self.send(b"b NOOP\r\n"), b"b OK NOOP completed\r\n")

    def test_hugeSequenceSet(self) -> None:
        """A sequence set of 100,000 ranges: BAD (the line is over the limit)."""
        ranges = b",".join(b"%d:%d" % (i, i + 1) for i in range(1, 200000, 2))
        out = self.send(b"a FETCH " + ranges + b" FLAGS\r\n")
        self.assertEqual(out, b"a BAD Command line too long\r\n")
        self.assertEqual(self.send(b"b NOOP\r\n"), b"b OK NOOP completed\r\n")

    def test_manyRangesWithinLine(self) -> None:
        ranges = b",".join([b"1"] * 30000)
        self.assertEqual(self.send(b"a FETCH " + ranges + b" FLAGS\r\n"), b"a BAD Sequence set too long\r\n")

    def test_literalOverLimit(self) -> None:
        """A synchronising literal over the limit is refused before it is sent."""
        self.assertEqual(self.send(b"a LOGIN {1000000}\r\n"), b"a BAD [TOOBIG] Literal too large\r\n")
        self.assertEqual(self.send(b"b NOOP\r\n"), b"b OK NOOP completed\r\n")

    def test_nonSynchronisingLiteralOverLimit(self) -> None:
        """
        RFC 7888 §4 (LITERAL+): the octets are read and dropped, not kept,
        and not run as commands; then BAD.
        """
        out = self.send(b"a SEARCH TEXT {100000+}\r\n" + b"b LOGOUT\r\n" * 10000)
        self.assertEqual(out, b"a BAD [TOOBIG] Literal too large\r\n")
        self.assertFalse(self.transport.disconnecting)
        self.assertLess(self.server.reader.buffered(), 100)

    def test_absurdLiteral(self) -> None:
        """A LITERAL+ literal larger than any message: BYE and close."""
        out = self.send(b"a APPEND INBOX {99999999999+}\r\n")
        self.assertEqual(out, b"* BYE [TOOBIG] Literal too large\r\n")
        self.assertTrue(self.transport.disconnecting)

    def test_unterminatedLiteral(self) -> None:
        """Input of an unfinished literal is held only up to its size; the idle timer still runs."""
        self.send(b"a LOGIN {60000}\r\n" + b"x" * 1000)
        self.clock.advance(30 * 60 + 1)
        self.assertTrue(self.transport.disconnecting)

    def test_longLine(self) -> None:
        out = self.send(b"a NOOP " + b"x" * 100000 + b"\r\nb NOOP\r\n")
        self.assertEqual(out, b"a BAD Command line too long\r\nb OK NOOP completed\r\n")

    def test_listPatternBacktracking(self) -> None:
        """
        A LIST pattern built to make a regular expression backtrack
        (``*a*a*a...b``) is matched in bounded steps; an over-long one is BAD.
        """
        self.send(b"c CREATE " + b"a" * 200 + b"\r\n")
        out = self.send(b'a LIST "" "' + b"*a" * 400 + b'b"\r\n')
        self.assertEqual(out, b"a OK LIST completed\r\n")
        out = self.send(b'b LIST "" "' + b"*" * 2000 + b'"\r\n')
        self.assertEqual(out, b"b BAD Mailbox pattern too long\r\n")

    def test_binaryJunk(self) -> None:
        out = self.send(b"\x00\xff\x01 \x02\r\n")
        self.assertTrue(out.startswith(b"* BAD "), out)

    def test_pipelineFloodPausesReading(self) -> None:
        """Commands queued behind a slow one are bounded: reading pauses."""
        from twisted.internet.defer import Deferred

        self.account.status = lambda name: Deferred()  # type: ignore[method-assign]
        self.send(b"a STATUS INBOX (MESSAGES)\r\n")
        self.send(b"b NOOP\r\n" * (MAX_PENDING_INPUT // 8 + 10))
        self.assertEqual(self.transport.producerState, "paused")


class PlaintextSecurityTests(IMAPTestCase):
    secure = False

    def test_starttlsPipelinedCommandsDiscarded(self) -> None:
        """CVE-2011-0411: a LOGIN injected after STARTTLS is never run."""
        out = self.send(b"a STARTTLS\r\nb LOGIN alice@example.test secret\r\n")
        self.assertEqual(out, b"a OK Begin TLS negotiation now\r\n")
        self.assertEqual(self.authenticator.interfaces, [])
        self.assertEqual(self.send(b"c CAPABILITY\r\n").count(b"c OK"), 1)

    def test_noPlaintextAuthenticate(self) -> None:
        """LOGINDISABLED: AUTHENTICATE PLAIN is refused too, before TLS."""
        out = self.send(b"a AUTHENTICATE PLAIN\r\n")
        self.assertEqual(out, b"a NO [PRIVACYREQUIRED] Use STARTTLS first\r\n")
        out = self.send(b"b AUTHENTICATE PLAIN " + base64.b64encode(b"\0alice@example.test\0secret") + b"\r\n")
        self.assertEqual(out, b"b NO [PRIVACYREQUIRED] Use STARTTLS first\r\n")
        self.assertEqual(self.authenticator.interfaces, [])
