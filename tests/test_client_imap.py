"""
Tests for L{mailnet.client.imap}: the response reader and parser with
hostile input (huge literal announcements, unterminated literals, deep
nesting, endless lines), modified UTF-7, command encoding, and the
protocol on a L{StringTransport} with a fake clock (timeouts, a STARTTLS
injection, the wrong service).
"""

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from mailnet.client import imap
from mailnet.client.imap import (
    Atom,
    IMAPClientProtocol,
    IMAPSession,
    Literal,
    ProtocolError,
    ResponseReader,
    _Unparsable,
    commandSegments,
    decodeFolderName,
    encodeFolderName,
    parseResponse,
    parseUIDSet,
    uidSet,
)
from mailnet.client.tls import ServerEndpoint, TLSMode
from mailnet.errors import ConnectFailed, ServerTimeout, TLSFailed, TLSUnavailable


def parse(data: bytes, **limits):
    """@return: the L{Response}s in C{data}."""
    reader = ResponseReader(**limits)
    return [parseResponse(segments) for segments in reader.feed(data)]


class ResponseReaderTests(unittest.SynchronousTestCase):
    def test_literalAcrossReads(self):
        """A literal split over many reads is assembled, CRLF inside it kept."""
        reader = ResponseReader()
        data = b"* 1 FETCH (UID 7 BODY[] {12}\r\nab\r\ncd\r\nef\r\n)\r\n"
        done = []
        for i in range(len(data)):
            done += reader.feed(data[i : i + 1])
        [response] = [parseResponse(s) for s in done]
        self.assertEqual(response.tokens, [b"1", b"FETCH", [b"UID", b"7", b"BODY[]", b"ab\r\ncd\r\nef\r\n"]])

    def test_hugeLiteralAnnouncementRefusedAtOnce(self):
        """C{{99999999999}} is refused when read, before any of it is waited for."""
        reader = ResponseReader()
        self.assertRaises(_Unparsable, reader.feed, b"* 1 FETCH (BODY[] {99999999999}\r\n")

    def test_literalLimit(self):
        reader = ResponseReader(maxLiteral=10)
        reader.feed(b"* 1 FETCH (BODY[] {10}\r\n0123456789)\r\n")
        self.assertRaises(_Unparsable, reader.feed, b"* 1 FETCH (BODY[] {11}\r\n")

    def test_endlessLine(self):
        """A line that never ends is refused once it passes the limit."""
        reader = ResponseReader(maxLine=100)
        reader.feed(b"* OK " + b"a" * 90)
        self.assertRaises(_Unparsable, reader.feed, b"a" * 20)

    def test_responseLimit(self):
        """Many literals in one response add up to the response limit."""
        reader = ResponseReader(maxResponse=100)
        self.assertRaises(_Unparsable, reader.feed, b"* LIST () NIL {40}\r\n" + b"x" * 40 + b" {40}\r\n" + b"y" * 40 + b" {40}\r\n")

    def test_unterminatedLiteral(self):
        """An unfinished literal is no response, and the reader says it is mid-response."""
        reader = ResponseReader()
        self.assertEqual(reader.feed(b"* 1 FETCH (BODY[] {100}\r\nshort"), [])
        self.assertTrue(reader.midResponse())


class ParseResponseTests(unittest.SynchronousTestCase):
    def test_status(self):
        [r] = parse(b"* OK [UIDVALIDITY 3857529045] UIDs valid\r\n")
        self.assertEqual((r.tag, r.status, r.code, r.text), (b"*", b"OK", [b"UIDVALIDITY", b"3857529045"], "UIDs valid"))

    def test_tagged(self):
        [r] = parse(b"m1 NO [TRYCREATE] No such mailbox\r\n")
        self.assertEqual((r.tag, r.status, r.code, r.reply()), (b"m1", b"NO", [b"TRYCREATE"], "NO No such mailbox"))

    def test_fetchSectionAtom(self):
        """A section with spaces and parentheses is one atom; NIL is None; quoted escapes."""
        [r] = parse(b'* 2 FETCH (UID 9 FLAGS (\\Seen $x) BODY[HEADER.FIELDS (FROM SUBJECT)] {4}\r\nab\r\n X NIL "a \\"q\\" \\\\")\r\n')
        self.assertEqual(r.kind, b"FETCH")
        self.assertEqual(r.tokens[2], [b"UID", b"9", b"FLAGS", [b"\\Seen", b"$x"], b"BODY[HEADER.FIELDS (FROM SUBJECT)]", b"ab\r\n", b"X", None, b'a "q" \\'])

    def test_partialOrigin(self):
        [r] = parse(b"* 1 FETCH (UID 3 BODY[]<1024> {2}\r\nxy)\r\n")
        self.assertEqual(r.tokens[2], [b"UID", b"3", b"BODY[]<1024>", b"xy"])

    def test_deepNesting(self):
        """Lists nested past the limit are refused; up to it they parse."""
        self.assertRaises(_Unparsable, parse, b"* X " + b"(" * 1000 + b")" * 1000 + b"\r\n")
        [r] = parse(b"* X " + b"(" * 10 + b")" * 10 + b"\r\n")
        self.assertEqual(r.kind, b"X")

    def test_tooManyTokens(self):
        reader = ResponseReader()
        [segments] = reader.feed(b"* SEARCH" + b" 1" * 1000 + b"\r\n")
        self.assertRaises(_Unparsable, parseResponse, segments, maxTokens=100)
        self.assertEqual(len(parseResponse(segments).tokens), 1001)

    def test_malformed(self):
        for bad in [
            b"* X (a b\r\n",  # unterminated list
            b"* X a)\r\n",  # unbalanced
            b'* X "abc\r\n',  # unterminated quoted string
            b"* X BODY[HEADER\r\n",  # section without ]
            b"* OK [UIDVALIDITY 3\r\n",  # response code without ]
            b"\r\n",  # no tag
        ]:
            self.assertRaises(_Unparsable, parse, bad)

    def test_continuation(self):
        [r] = parse(b"+ idling\r\n")
        self.assertEqual((r.tag, r.text), (b"+", "idling"))


class FolderNameTests(unittest.SynchronousTestCase):
    def test_rfc3501Example(self):
        """RFC 3501 §5.1.3's example, both ways."""
        name = "~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e"
        self.assertEqual(encodeFolderName(name), b"~peter/mail/&U,BTFw-/&ZeVnLIqe-")
        self.assertEqual(decodeFolderName(b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"), name)

    def test_ampersandAndUmlaut(self):
        self.assertEqual(encodeFolderName("Prüfung & Co"), b"Pr&APw-fung &- Co")
        self.assertEqual(decodeFolderName(b"Pr&APw-fung &- Co"), "Prüfung & Co")
        self.assertEqual(decodeFolderName(encodeFolderName("😀 emoji")), "😀 emoji")

    def test_notUTF7(self):
        """A name that is not modified UTF-7 is read as UTF-8, never an error."""
        self.assertEqual(decodeFolderName("Prüfung".encode()), "Prüfung")
        self.assertEqual(decodeFolderName(b"a&b"), "a&b")
        self.assertEqual(decodeFolderName(b"&AAA"), "&AAA")
        self.assertEqual(decodeFolderName(b"&2D3-"), "&2D3-")  # a lone surrogate


class CommandTests(unittest.SynchronousTestCase):
    def test_quotedAndLiteral(self):
        """ASCII strings are quoted (escaped); others and Literals wait for a continuation."""
        self.assertEqual(commandSegments("SELECT", ['a"b\\c']), [b'SELECT "a\\"b\\\\c"'])
        self.assertEqual(commandSegments("LOGIN", ["bob", "pässword"]), [b'LOGIN "bob" {9}', "pässword".encode()])
        self.assertEqual(
            commandSegments("APPEND", ["Sent", [Atom(b"\\Seen")], Literal(b"Hi\r\n")]),
            [b'APPEND "Sent" (\\Seen) {4}', b"Hi\r\n"],
        )

    def test_literalPlus(self):
        self.assertEqual(
            commandSegments("APPEND", ["Sent", Literal(b"Hi"), Atom(b"X")], literalPlus=True),
            [b'APPEND "Sent" {2+}\r\nHi X'],
        )

    def test_lineBreakNeverQuoted(self):
        """A CR or LF in a string makes it a literal, never a broken command line."""
        self.assertEqual(commandSegments("SEARCH", [Atom(b"SUBJECT"), "a\r\nm9 DELETE INBOX"]),
                         [b"SEARCH SUBJECT {18}", b"a\r\nm9 DELETE INBOX"])

    def test_uidSets(self):
        self.assertEqual(uidSet([7, 1, 2, 3, 9, 10]), b"1:3,7,9:10")
        self.assertEqual(parseUIDSet(b"1:3,7,10:9"), [1, 2, 3, 7, 9, 10])
        self.assertRaises(_Unparsable, parseUIDSet, b"1:99999999999")
        self.assertRaises(_Unparsable, parseUIDSet, b"1:x")


ENDPOINT = ServerEndpoint(host="mail.test", port=143, tls=TLSMode.none, allowPlaintext=True, timeout=30, greetingTimeout=5)


class ProtocolTests(unittest.SynchronousTestCase):
    def connect(self):
        clock = Clock()
        protocol = IMAPClientProtocol(ENDPOINT, None, clock)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport, clock

    def greeted(self):
        protocol, transport, clock = self.connect()
        protocol.dataReceived(b"* OK [CAPABILITY IMAP4rev1] hi\r\n")
        self.assertTrue(protocol.greeted.called)
        return protocol, transport, clock

    def test_command(self):
        protocol, transport, clock = self.greeted()
        d = protocol.command("NOOP")
        self.assertEqual(transport.value(), b"m1 NOOP\r\n")
        protocol.dataReceived(b"* 3 EXISTS\r\nm1 OK done\r\n")
        tagged, untagged = self.successResultOf(d)
        self.assertEqual((tagged.status, [u.kind for u in untagged]), (b"OK", [b"EXISTS"]))

    def test_passwordNeverInTranscript(self):
        """A masked command's password is not shown, also when it goes as a literal."""
        lines = []
        protocol = IMAPClientProtocol(ENDPOINT, lambda who, line: lines.append(line), Clock())
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"* OK hi\r\n")
        protocol.command("LOGIN", "bob", "pässwörd", masked=True)
        protocol.dataReceived(b"+ go\r\n")
        self.assertIn("pässwörd".encode(), transport.value())
        self.assertEqual(lines[-3:], ['m1 LOGIN "bob" ****', "+ go", "****"])
        protocol.command("LOGIN", "bob", "secret", masked=True)
        protocol.dataReceived(b"m1 NO bad\r\n")
        self.assertEqual(lines[-1], 'm2 LOGIN "bob" ****')

    def test_literalWaitsForContinuation(self):
        protocol, transport, clock = self.greeted()
        d = protocol.command("APPEND", "INBOX", Literal(b"abc"))
        self.assertEqual(transport.value(), b'm1 APPEND "INBOX" {3}\r\n')
        transport.clear()
        protocol.dataReceived(b"+ go ahead\r\n")
        self.assertEqual(transport.value(), b"abc\r\n")
        protocol.dataReceived(b"m1 OK appended\r\n")
        self.assertEqual(self.successResultOf(d)[0].status, b"OK")

    def lose(self, protocol):
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        protocol.connectionLost(Failure(ConnectionDone()))

    def test_hugeLiteralClosesConnection(self):
        """A huge literal announcement fails the command with a clear error and drops the connection."""
        protocol, transport, clock = self.greeted()
        d = protocol.command("UID FETCH", Atom(b"1"), Atom(b"BODY[]"))
        protocol.dataReceived(b"* 1 FETCH (BODY[] {99999999999}\r\n")
        self.assertTrue(transport.disconnecting or transport.disconnected)
        self.lose(protocol)
        error = self.failureResultOf(d, ProtocolError).value
        self.assertIn("99999999999", str(error))

    def test_connectionEndsInLiteral(self):
        """The connection ending in the middle of a literal is an error, not a short message."""
        protocol, transport, clock = self.greeted()
        d = protocol.command("UID FETCH", Atom(b"1"), Atom(b"BODY[]"))
        protocol.dataReceived(b"* 1 FETCH (BODY[] {100}\r\nonly this")
        self.lose(protocol)
        self.assertIn("middle of a response", str(self.failureResultOf(d, ProtocolError).value))

    def test_deepNestingClosesConnection(self):
        protocol, transport, clock = self.greeted()
        d = protocol.command("NOOP")
        protocol.dataReceived(b"* X " + b"(" * 5000 + b"\r\n")
        self.lose(protocol)
        self.assertIn("nested", str(self.failureResultOf(d, ProtocolError).value))

    def test_replyTimeout(self):
        protocol, transport, clock = self.greeted()
        d = protocol.command("NOOP")
        clock.advance(29)
        self.assertFalse(transport.disconnecting or transport.disconnected)
        clock.advance(2)
        self.lose(protocol)
        self.failureResultOf(d, ServerTimeout)

    def test_noGreeting(self):
        protocol, transport, clock = self.connect()
        clock.advance(6)
        self.lose(protocol)
        self.assertIn("--tls implicit", str(self.failureResultOf(protocol.greeted, ServerTimeout).value))

    def test_wrongService(self):
        """A POP3 greeting on the IMAP port says so, naming --imap-port."""
        protocol, transport, clock = self.connect()
        protocol.dataReceived(b"+OK POP3 ready\r\n")
        self.lose(protocol)
        error = self.failureResultOf(protocol.greeted, ConnectFailed).value
        self.assertIn("a POP3 server", str(error))
        self.assertIn("--imap-port", str(error))

    def test_unsolicitedTaggedReply(self):
        protocol, transport, clock = self.greeted()
        protocol.dataReceived(b"zz OK what\r\n")
        self.assertTrue(transport.disconnecting or transport.disconnected)

    def test_idleUntaggedNotKept(self):
        """During IDLE untagged responses go to the listener, not into a list that grows for hours."""
        protocol, transport, clock = self.greeted()
        seen = []
        protocol.onUntagged = seen.append
        started = []
        d = protocol.command("IDLE", onContinue=started.append, timed=False)
        protocol.dataReceived(b"+ idling\r\n")
        self.assertEqual(len(started), 1)
        clock.advance(10000)  # no reply timeout while idling
        protocol.dataReceived(b"* 4 EXISTS\r\n" * 3)
        protocol.sendLine(b"DONE")
        protocol.dataReceived(b"m1 OK IDLE done\r\n")
        tagged, untagged = self.successResultOf(d)
        self.assertEqual((len(seen), untagged), (3, []))


class ScriptedIMAP(Protocol):
    """Greets, then answers each command line from C{script} (tag substituted)."""

    script: dict = {}

    def connectionMade(self):
        self.transport.write(self.script[b"greeting"])

    def dataReceived(self, data):
        for line in data.split(b"\r\n"):
            if not line:
                continue
            tag, _, rest = line.partition(b" ")
            answer = self.script.get(rest.split(b" ")[0].upper())
            if answer is not None:
                self.transport.write(answer.replace(b"TAG", tag))


class SessionTests(unittest.TestCase):
    def serve(self, script):
        ScriptedIMAP.script = script
        port = reactor.listenTCP(0, Factory.forProtocol(ScriptedIMAP), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return ServerEndpoint(host="localhost", port=port.getHost().port, tls=TLSMode.starttls, insecure=True, timeout=10)

    @defer.inlineCallbacks
    def test_starttlsInjection(self):
        """A response after STARTTLS's OK in the same plaintext read is an injection: refused."""
        endpoint = self.serve({
            b"greeting": b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n",
            b"STARTTLS": b"TAG OK go\r\n* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] injected\r\n",
        })
        error = yield self.assertFailure(IMAPSession.connect(reactor, endpoint), TLSFailed)
        self.assertIn("injection", str(error))

    @defer.inlineCallbacks
    def test_noStarttls(self):
        """A server without STARTTLS is not talked to in the clear."""
        endpoint = self.serve({b"greeting": b"* OK [CAPABILITY IMAP4rev1] hi\r\n"})
        yield self.assertFailure(IMAPSession.connect(reactor, endpoint), TLSUnavailable)

    @defer.inlineCallbacks
    def test_bye(self):
        endpoint = self.serve({b"greeting": b"* BYE \x1b[31mtoo many connections\r\n"})
        error = yield self.assertFailure(IMAPSession.connect(reactor, endpoint), imap.ServerBye)
        self.assertIn("too many connections", str(error))
