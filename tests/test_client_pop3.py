"""
Tests for L{mailnet.client.pop3}: transcripts on L{StringTransport}, and
STLS, implicit TLS and error paths against a scripted POP3 server on
127.0.0.1.
"""

from typing import Dict, List, Optional

import attr
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.trial import unittest

from mailnet.client.pop3 import POP3Session, _POP3Protocol
from mailnet.client.tls import ServerEndpoint, TLSMode
from mailnet.errors import (
    AuthenticationFailed,
    ConnectFailed,
    NoSuchMessage,
    PlaintextRefused,
    ServerError,
    ServerTimeout,
    TLSFailed,
    TLSUnavailable,
)
from mailnet.tls import serverContextFactory
from tests.test_client_smtp import certificate, closedPort, listenTLS

MESSAGES = [
    b"From: bob@example.test\r\nSubject: one\r\n\r\nfirst\r\n.dotted\r\n",
    b"From: carol@example.test\r\nSubject: two\r\n\r\nsecond\r\n",
]


# --- a scripted POP3 server -----------------------------------------------


@attr.s(auto_attribs=True)
class FakePOP3Config:
    messages: List[bytes] = attr.ib(factory=lambda: list(MESSAGES))
    users: Dict[str, str] = attr.ib(factory=lambda: {"alice@example.test": "secret"})
    offerSTLS: bool = True
    contextFactory: object = None
    implicit: bool = False
    lines: List[bytes] = attr.ib(factory=list)
    greeting: str = "+OK fake POP3 ready"


class FakePOP3Server(LineReceiver):
    """Just enough POP3 (RFC 1939, 2449, 2595) to test a client."""

    delimiter = b"\r\n"

    def __init__(self, config: FakePOP3Config) -> None:
        self.config = config
        self.tls = config.implicit
        self.user: Optional[str] = None
        self.loggedIn = False
        self.deleted: set = set()

    def connectionMade(self) -> None:
        self.reply(self.config.greeting)
        if self.config.greeting.startswith("-ERR"):
            self.transport.loseConnection()

    def reply(self, text: str) -> None:
        self.sendLine(text.encode("utf-8"))

    def multi(self, first: str, lines: List[bytes]) -> None:
        self.reply(first)
        for line in lines:
            self.sendLine(b"." + line if line.startswith(b".") else line)
        self.sendLine(b".")

    def lineReceived(self, line: bytes) -> None:
        self.config.lines.append(line)
        verb, _, rest = line.decode("utf-8").partition(" ")
        getattr(self, "do_" + verb.upper(), lambda rest: self.reply("-ERR unknown command"))(rest)

    def do_CAPA(self, rest: str) -> None:
        caps = [b"USER", b"TOP", b"UIDL"]
        if self.config.offerSTLS and not self.tls:
            caps.append(b"STLS")
        self.multi("+OK capabilities", caps)

    def do_STLS(self, rest: str) -> None:
        self.reply("+OK begin TLS")
        self.transport.startTLS(self.config.contextFactory)
        self.tls = True

    def do_USER(self, rest: str) -> None:
        self.user = rest
        self.reply("+OK")

    def do_PASS(self, rest: str) -> None:
        if self.config.users.get(self.user or "") == rest:
            self.loggedIn = True
            self.reply("+OK logged in")
        else:
            self.reply("-ERR [AUTH] invalid credentials")

    def _message(self, rest: str) -> Optional[int]:
        try:
            index = int(rest.split()[0]) - 1
        except (ValueError, IndexError):
            index = -1
        if not 0 <= index < len(self.config.messages) or index in self.deleted:
            self.reply("-ERR no such message")
            return None
        return index

    def do_STAT(self, rest: str) -> None:
        live = [m for i, m in enumerate(self.config.messages) if i not in self.deleted]
        self.reply("+OK %d %d" % (len(live), sum(map(len, live))))

    def do_LIST(self, rest: str) -> None:
        self.multi("+OK", [b"%d %d" % (i + 1, len(m)) for i, m in enumerate(self.config.messages) if i not in self.deleted])

    def do_UIDL(self, rest: str) -> None:
        self.multi("+OK", [b"%d uid-%d" % (i + 1, i + 1) for i, m in enumerate(self.config.messages) if i not in self.deleted])

    def do_TOP(self, rest: str) -> None:
        index = self._message(rest)
        if index is not None:
            header = self.config.messages[index].split(b"\r\n\r\n", 1)[0]
            self.multi("+OK", header.split(b"\r\n") + [b""])

    def do_RETR(self, rest: str) -> None:
        index = self._message(rest)
        if index is not None:
            self.multi("+OK", self.config.messages[index].split(b"\r\n")[:-1])

    def do_DELE(self, rest: str) -> None:
        index = self._message(rest)
        if index is not None:
            self.deleted.add(index)
            self.reply("+OK deleted")

    def do_QUIT(self, rest: str) -> None:
        # RFC 1939 §6: the UPDATE state removes what was deleted.
        self.config.messages[:] = [m for i, m in enumerate(self.config.messages) if i not in self.deleted]
        self.reply("+OK bye")
        self.transport.loseConnection()


class ScriptedPOP3Mixin:
    def startPOP3(self, mode: TLSMode = TLSMode.starttls, cert: Optional[tuple] = None, **configKw) -> tuple:
        certPath, keyPath = cert or certificate(self)
        config = FakePOP3Config(contextFactory=serverContextFactory(certPath, keyPath), implicit=mode is TLSMode.implicit, **configKw)
        port = listenTLS(self, lambda: FakePOP3Server(config), certPath, keyPath, mode is TLSMode.implicit)
        endpoint = ServerEndpoint(host="localhost", port=port, tls=mode, cafile=certPath, timeout=5)
        return config, endpoint


# --- transcript tests -------------------------------------------------------


class TranscriptTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.lines: List[tuple] = []
        self.clock = Clock()
        self.protocol = _POP3Protocol(30, lambda who, line: self.lines.append((who, line)), self.clock)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        endpoint = ServerEndpoint(host="pop.example.test", port=110, tls=TLSMode.none, allowPlaintext=True)
        self.session = POP3Session(self.protocol, endpoint, None)

    def server(self, *lines: bytes) -> bytes:
        self.transport.clear()
        for line in lines:
            self.protocol.dataReceived(line + b"\r\n")
        return self.transport.value()

    def results(self, d: defer.Deferred) -> list:
        out: list = []
        d.addBoth(out.append)
        return out

    def test_loginMasksPassword(self) -> None:
        self.server(b"+OK hi <1.2@x>")
        done = self.results(self.session.login("alice@example.test", "s3cret"))
        self.assertEqual(self.transport.value(), b"USER alice@example.test\r\n")
        self.assertEqual(self.server(b"+OK"), b"PASS s3cret\r\n")
        self.server(b"+OK in")
        self.assertEqual(done, [None])
        self.assertIn(("C", "PASS ****"), self.lines)
        self.assertNotIn("s3cret", str(self.lines))

    def test_noAPOP(self) -> None:
        """An APOP challenge in the greeting does not make us use MD5 APOP."""
        self.server(b"+OK hi <1.2@x>")
        self.session.login("alice@example.test", "s3cret")
        self.assertTrue(self.transport.value().startswith(b"USER "))

    def test_authFailure(self) -> None:
        self.server(b"+OK hi")
        done = self.results(self.session.login("alice@example.test", "nope"))
        self.server(b"+OK")
        self.server(b"-ERR [AUTH] invalid")
        done[0].trap(AuthenticationFailed)
        self.assertIn("[AUTH] invalid", str(done[0].value))

    def test_plaintextRefused(self) -> None:
        self.session.endpoint = attr.evolve(self.session.endpoint, allowPlaintext=False)
        self.server(b"+OK hi")
        done = self.results(self.session.login("alice@example.test", "s3cret"))
        done[0].trap(PlaintextRefused)
        self.assertEqual(self.transport.value(), b"")

    def test_listAndRetrieve(self) -> None:
        """Message numbers are 1-based; RETR undoes dot-stuffing, CRLF kept."""
        self.server(b"+OK hi")
        sizes = self.results(self.session.list())
        self.assertEqual(self.transport.value(), b"LIST\r\n")
        self.server(b"+OK", b"1 10", b"2 20", b".")
        self.assertEqual(sizes, [[10, 20]])
        got = self.results(self.session.retrieve(2))
        self.assertEqual(self.transport.value(), b"RETR 2\r\n")
        self.server(b"+OK", b"Subject: x", b"", b"..dot", b".")
        self.assertEqual(got, [b"Subject: x\r\n\r\n.dot\r\n"])

    def test_top(self) -> None:
        self.server(b"+OK hi")
        self.session.list()
        self.server(b"+OK", b"1 10", b".")
        got = self.results(self.session.top(1, 0))
        self.assertEqual(self.transport.value(), b"TOP 1 0\r\n")
        self.server(b"+OK", b"Subject: x", b"", b".")
        self.assertEqual(got, [b"Subject: x\r\n\r\n"])

    def test_noSuchMessage(self) -> None:
        self.server(b"+OK hi")
        self.session.list()
        self.server(b"+OK", b"1 10", b".")
        got = self.results(self.session.retrieve(3))
        got[0].trap(NoSuchMessage)
        self.assertEqual(str(got[0].value), "there is no message 3 (the mailbox has 1)")
        got = self.results(self.session.delete(0))
        got[0].trap(NoSuchMessage)

    def test_serverSaysNoSuchMessage(self) -> None:
        self.server(b"+OK hi")
        got = self.results(self.session.retrieve(5))
        self.server(b"-ERR no such message")
        got[0].trap(NoSuchMessage)

    def test_uidl(self) -> None:
        self.server(b"+OK hi")
        got = self.results(self.session.uidl())
        self.server(b"+OK", b"1 abc", b"2 def", b".")
        self.assertEqual(got, [["abc", "def"]])

    def test_deleteAndQuit(self) -> None:
        self.server(b"+OK hi")
        self.session.list()
        self.server(b"+OK", b"1 10", b".")
        self.session.delete(1)
        self.assertEqual(self.transport.value(), b"DELE 1\r\n")
        self.server(b"+OK")
        done = self.results(self.session.quit())
        self.assertEqual(self.transport.value(), b"QUIT\r\n")
        self.server(b"+OK bye")
        self.assertEqual(done, [])
        self.protocol.connectionLost(None)
        self.assertEqual(done, [None])

    def test_quitRefused(self) -> None:
        """-ERR to QUIT: the deletions were not committed; say so."""
        self.server(b"+OK hi")
        done = self.results(self.session.quit())
        self.server(b"-ERR some deleted messages not removed")
        done[0].trap(ServerError)

    def test_timeout(self) -> None:
        self.server(b"+OK hi")
        done = self.results(self.session.stat())
        self.clock.advance(31)
        self.assertTrue(self.transport.disconnecting)
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.protocol.connectionLost(Failure(ConnectionDone()))
        done[0].trap(ServerTimeout)


# --- over real sockets ------------------------------------------------------


class LoopbackTests(ScriptedPOP3Mixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_stlsSession(self):
        """STLS before USER/PASS, then list, retrieve, delete and quit."""
        config, endpoint = self.startPOP3(TLSMode.starttls)
        session = yield POP3Session.connect(reactor, endpoint)
        yield session.login("alice@example.test", "secret")
        self.assertLess(config.lines.index(b"STLS"), config.lines.index(b"USER alice@example.test"))
        sizes = yield session.list()
        self.assertEqual(sizes, [len(m) for m in MESSAGES])
        data = yield session.retrieve(1)
        self.assertEqual(data, MESSAGES[0])
        uids = yield session.uidl()
        self.assertEqual(uids, ["uid-1", "uid-2"])
        yield session.delete(1)
        yield session.quit()
        self.assertEqual(config.messages, MESSAGES[1:])

    @defer.inlineCallbacks
    def test_implicit(self):
        config, endpoint = self.startPOP3(TLSMode.implicit)
        session = yield POP3Session.connect(reactor, endpoint)
        yield session.login("alice@example.test", "secret")
        count, octets = yield session.stat()
        self.assertEqual(count, 2)
        yield session.quit()
        self.assertNotIn(b"STLS", config.lines)

    @defer.inlineCallbacks
    def test_noSTLS(self):
        """RFC 2595 §2.2: no silent fallback to plaintext."""
        config, endpoint = self.startPOP3(TLSMode.starttls, offerSTLS=False)
        with self.assertRaises(TLSUnavailable):
            yield POP3Session.connect(reactor, endpoint)
        self.assertFalse(any(l.startswith((b"USER", b"PASS")) for l in config.lines))

    @defer.inlineCallbacks
    def test_untrusted(self):
        config, endpoint = self.startPOP3(TLSMode.starttls)
        otherCert, _ = certificate(self, "elsewhere.example.test")
        with self.assertRaises(TLSFailed):
            yield POP3Session.connect(reactor, attr.evolve(endpoint, cafile=otherCert))
        self.assertFalse(any(l.startswith((b"USER", b"PASS")) for l in config.lines))

    @defer.inlineCallbacks
    def test_authFailure(self):
        config, endpoint = self.startPOP3()
        session = yield POP3Session.connect(reactor, endpoint)
        with self.assertRaises(AuthenticationFailed):
            yield session.login("alice@example.test", "wrong")
        yield session.abort()

    @defer.inlineCallbacks
    def test_errorGreeting(self):
        config, endpoint = self.startPOP3(TLSMode.starttls, greeting="-ERR go away")
        with self.assertRaises(ServerError) as caught:
            yield POP3Session.connect(reactor, endpoint)
        self.assertIn("go away", str(caught.exception))

    @defer.inlineCallbacks
    def test_connectionRefused(self):
        endpoint = ServerEndpoint(host="127.0.0.1", port=closedPort(), tls=TLSMode.starttls)
        with self.assertRaises(ConnectFailed):
            yield POP3Session.connect(reactor, endpoint)


class STLSInjectionTests(unittest.SynchronousTestCase):
    """RFC 2595 §4: plaintext lines after "+OK" to STLS are an attack, not answers."""

    def test_injectedLinesRefused(self) -> None:
        from twisted.internet.interfaces import ITLSTransport
        from zope.interface import directlyProvides

        protocol = _POP3Protocol(30, None, Clock(), "pop.example.test", 110)
        transport = StringTransport()
        started: list = []
        transport.startTLS = started.append  # type: ignore[attr-defined]
        directlyProvides(transport, ITLSTransport)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"+OK hi\r\n")
        outcome: list = []
        protocol.startTLS(object()).addBoth(outcome.append)
        protocol.dataReceived(b"+OK\r\nSTLS\r\nUSER\r\n.\r\n")
        self.assertEqual(transport.value(), b"CAPA\r\nSTLS\r\n")
        protocol.dataReceived(b"+OK begin\r\n+OK\r\nUSER\r\n.\r\n")
        self.assertEqual(len(started), 1)
        self.assertTrue(transport.disconnected)
        from twisted.internet.error import ConnectionAborted
        from twisted.python.failure import Failure

        protocol.connectionLost(Failure(ConnectionAborted()))
        outcome[0].trap(TLSFailed)
        self.assertIn("unencrypted data after its STLS reply", str(outcome[0].value))


class WrongPortTests(unittest.SynchronousTestCase):
    """POP3 against the wrong port (issue 15 item 8)."""

    def connect(self, mode: TLSMode = TLSMode.starttls):
        from twisted.internet.error import ConnectionDone

        self.clock = Clock()
        endpoint = ServerEndpoint(host="mail.example.test", port=110, tls=mode, timeout=60)
        self.protocol = _POP3Protocol(60, None, self.clock, "mail.example.test", 110, endpoint)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.outcome: list = []
        self.protocol.greeted.addBoth(self.outcome.append)
        self.done = lambda: self.protocol.connectionLost(Failure(ConnectionDone()))

    def test_smtpPort(self) -> None:
        """The greeting of an SMTP server: named as such, not "-ERR"."""
        from mailnet.errors import WrongService

        self.connect()
        self.protocol.dataReceived(b"220 mail.example.test ESMTP mailnet\r\n")
        self.done()
        self.outcome[0].trap(WrongService)
        message = str(self.outcome[0].value)
        self.assertIn("is an SMTP submission server, not a POP3 server", message)
        self.assertIn("'220 mail.example.test ESMTP mailnet'", message)
        self.assertIn("--pop3-port", message)
        self.assertNotIn("-ERR", message)

    def test_silentServer(self) -> None:
        """STLS mode against an implicit-TLS port: said after 15 s."""
        from mailnet.errors import NoGreeting

        self.connect()
        self.clock.advance(15.5)
        self.assertTrue(self.transport.disconnecting)
        self.done()
        self.outcome[0].trap(NoGreeting)
        self.assertIn("--tls implicit", str(self.outcome[0].value))

    def test_implicitWaitsLonger(self) -> None:
        """In implicit mode the greeting comes after the handshake: full timeout."""
        self.connect(TLSMode.implicit)
        self.clock.advance(30)
        self.assertFalse(self.transport.disconnecting)
