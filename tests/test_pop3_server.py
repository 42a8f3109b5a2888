# -*- test-case-name: tests.test_pop3_server -*-
"""
Tests for L{mailnet.pop3.server}: every command in every state on a
L{StringTransport}, transcripts against a real Maildir, streaming, limits,
and real TLS (STLS and implicit) on 127.0.0.1.
"""

import base64
import os
import poplib
import ssl
from typing import List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailnet.config import Limits
from mailnet.errors import LoginBusy
from mailnet.pop3 import _wire
from mailnet.pop3.server import (
    CHUNK_SIZE,
    MAX_UNDRAINED_OUTPUT,
    POP3Factory,
    POP3Server,
    State,
    isAcceptableLoginName,
    uidlFor,
)
from mailnet.store.maildir import MaildirStore, runSynchronously
from mailnet.testing import FakeAuthenticator, makeCertificate
from mailnet.tls import serverContextFactory

ALICE = "alice@example.test"
PASSWORD = "correct horse"
HOSTNAME = "pop.example.test"



def readFile(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def onTheWire(stored: bytes) -> bytes:
    """A Maildir file (LF line endings) as RETR sends it: CRLF, before dot-stuffing."""
    return stored.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class TLSStringTransport(StringTransport):
    """
    A StringTransport that records STLS, TCP_NODELAY and every write.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tlsStarted: List[object] = []
        self.noDelay: Optional[bool] = None
        self.writes: List[int] = []

    def startTLS(self, contextFactory) -> None:
        # What was written before the handshake began.
        self.tlsStarted.append(contextFactory)
        self.beforeTLS = self.value()

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = enabled

    def write(self, data: bytes) -> None:
        self.writes.append(len(data))
        super().write(data)


class POP3Mixin:
    """
    A real Maildir for alice in a temporary directory, a fake
    authenticator, a clock, and helpers to talk to a server.
    """

    allowPlaintextAuth = True
    tlsOptions: object = "tls-options"

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.store = MaildirStore(self.root, runSynchronously, "mx.example.test")
        self.maildir = self.store.maildir(ALICE)
        self.authenticator = FakeAuthenticator({ALICE: PASSWORD}, {ALICE: self.maildir})
        self.clock = Clock()
        self.limits = Limits()
        self.factory = self.makeFactory()

    def makeFactory(self, **kwargs) -> POP3Factory:
        settings = dict(
            hostname=HOSTNAME,
            authenticator=self.authenticator,
            limits=self.limits,
            tlsOptions=self.tlsOptions,
            allowPlaintextAuth=self.allowPlaintextAuth,
            clock=self.clock,
        )
        settings.update(kwargs)
        return POP3Factory(**settings)

    def deliver(self, body: bytes, returnPath: str = "bob@remote.test") -> None:
        receiver = self.store.receive(returnPath, [ALICE])
        receiver.write(body)
        self.successResultOf(receiver.finish())

    def connect(self, factory: Optional[POP3Factory] = None) -> Tuple[POP3Server, TLSStringTransport]:
        factory = factory or self.factory
        protocol = factory.buildProtocol(None)
        transport = TLSStringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def pump(self, transport: StringTransport) -> None:
        """Let a registered pull producer run to its end, as a consumer would."""
        while transport.producer is not None:
            transport.producer.resumeProducing()

    def send(self, protocol: POP3Server, transport: StringTransport, data: bytes) -> bytes:
        """
        Feed C{data}, stream any message to its end, and return what the
        server wrote in the meantime.
        """
        transport.clear()
        protocol.dataReceived(data)
        self.pump(transport)
        return transport.value()

    def lines(self, protocol: POP3Server, transport: StringTransport, data: bytes) -> List[str]:
        return self.send(protocol, transport, data).decode("utf-8").split("\r\n")[:-1]

    def loggedIn(self, factory: Optional[POP3Factory] = None) -> Tuple[POP3Server, TLSStringTransport]:
        protocol, transport = self.connect(factory)
        reply = self.send(protocol, transport, b"USER %s\r\nPASS %s\r\n" % (ALICE.encode(), PASSWORD.encode()))
        self.assertTrue(reply.endswith(b"\r\n"), reply)
        self.assertIn(b"+OK Logged in", reply)
        self.assertIs(protocol.state, State.TRANSACTION)
        return protocol, transport

    def transcript(self, protocol: POP3Server, transport: StringTransport, exchanges: Sequence[Tuple[str, Sequence[str]]]) -> None:
        """
        Each exchange: a client line, and the exact lines the server answers.
        """
        for client, expected in exchanges:
            self.assertEqual(self.lines(protocol, transport, client.encode("utf-8") + b"\r\n"), list(expected), client)

    def snapshot(self) -> list:
        return self.successResultOf(self.maildir.snapshot())

    def files(self, sub: str) -> List[str]:
        return sorted(os.listdir(os.path.join(self.maildir.path, sub)))


RP = "Return-Path: <bob@remote.test>"
FIRST = b"Subject: one\r\n\r\nfirst body\r\n"
SECOND = b"Subject: two\r\nX-Other: y\r\n\r\nline 1\r\nline 2\r\n.line 3 starts with a dot\r\nline 4\r\n"
THIRD = b"Subject: three\r\n\r\n.\r\n"


class AuthorizationTests(POP3Mixin, SynchronousTestCase):
    """
    The AUTHORIZATION state: greeting, CAPA, USER/PASS, AUTH PLAIN.
    """

    def test_greeting(self) -> None:
        """
        The greeting names the host and carries no APOP timestamp.
        """
        protocol, transport = self.connect()
        self.assertEqual(transport.value(), b"+OK pop.example.test POP3 mailnet ready\r\n")

    def test_tcpNoDelay(self) -> None:
        protocol, transport = self.connect()
        self.assertTrue(transport.noDelay)

    def test_capaPlaintextAllowed(self) -> None:
        protocol, transport = self.connect()
        self.transcript(
            protocol,
            transport,
            [
                (
                    "CAPA",
                    [
                        "+OK Capability list follows",
                        "TOP",
                        "UIDL",
                        "PIPELINING",
                        "RESP-CODES",
                        "AUTH-RESP-CODE",
                        "USER",
                        "SASL PLAIN",
                        "STLS",
                        "EXPIRE NEVER",
                        "LOGIN-DELAY 0",
                        "IMPLEMENTATION mailnet",
                        ".",
                    ],
                )
            ],
        )

    def test_capaBeforeTLS(self) -> None:
        """
        Without TLS (and plaintext logins not allowed) neither USER nor SASL
        is advertised, but STLS is.
        """
        protocol, transport = self.connect(self.makeFactory(allowPlaintextAuth=False))
        caps = self.lines(protocol, transport, b"capa\r\n")
        self.assertNotIn("USER", caps)
        self.assertNotIn("SASL PLAIN", caps)
        self.assertIn("STLS", caps)
        self.assertIn("PIPELINING", caps)

    def test_capaAfterSTLS(self) -> None:
        protocol, transport = self.connect(self.makeFactory(allowPlaintextAuth=False))
        self.assertEqual(self.lines(protocol, transport, b"STLS\r\n"), ["+OK Begin TLS negotiation"])
        self.assertEqual(transport.tlsStarted, ["tls-options"])
        # The answer went out in the clear, before the handshake.
        self.assertEqual(transport.beforeTLS, b"+OK Begin TLS negotiation\r\n")
        caps = self.lines(protocol, transport, b"CAPA\r\n")
        self.assertIn("USER", caps)
        self.assertIn("SASL PLAIN", caps)
        self.assertNotIn("STLS", caps)

    def test_capaImplicitTLS(self) -> None:
        protocol, transport = self.connect(self.makeFactory(allowPlaintextAuth=False, tlsOptions=None, implicitTLS=True))
        caps = self.lines(protocol, transport, b"CAPA\r\n")
        self.assertIn("USER", caps)
        self.assertIn("SASL PLAIN", caps)
        self.assertNotIn("STLS", caps)

    def test_capaWithoutTLSOptions(self) -> None:
        protocol, transport = self.connect(self.makeFactory(allowPlaintextAuth=False, tlsOptions=None))
        caps = self.lines(protocol, transport, b"CAPA\r\n")
        self.assertNotIn("STLS", caps)
        self.assertNotIn("USER", caps)
        self.assertEqual(self.lines(protocol, transport, b"STLS\r\n"), ["-ERR STLS not available"])

    def test_capaInTransaction(self) -> None:
        """
        After login STLS is no longer offered (RFC 2595 §4).
        """
        protocol, transport = self.loggedIn(self.makeFactory(allowPlaintextAuth=False, tlsOptions=None, implicitTLS=True))
        caps = self.lines(protocol, transport, b"CAPA\r\n")
        self.assertNotIn("STLS", caps)
        self.assertEqual(caps[-1], ".")

    def test_needTLS(self) -> None:
        """
        RFC 2595 §6, RFC 3206 §4: USER, PASS and AUTH before STLS are
        refused with [AUTH], and the authenticator never sees them.
        """
        protocol, transport = self.connect(self.makeFactory(allowPlaintextAuth=False))
        self.transcript(
            protocol,
            transport,
            [
                ("USER " + ALICE, ["-ERR [AUTH] Use STLS first"]),
                ("PASS " + PASSWORD, ["-ERR [AUTH] Use STLS first"]),
                ("AUTH PLAIN", ["-ERR [AUTH] Use STLS first"]),
                ("AUTH", ["-ERR [AUTH] Use STLS first"]),
            ],
        )
        self.assertEqual(self.authenticator.held, {})
        self.assertEqual(self.authenticator.failures, [])

    def test_needTLSButNoneOffered(self) -> None:
        protocol, transport = self.connect(self.makeFactory(allowPlaintextAuth=False, tlsOptions=None))
        [reply] = self.lines(protocol, transport, b"USER " + ALICE.encode() + b"\r\n")
        self.assertTrue(reply.startswith("-ERR [AUTH] "), reply)

    def test_userPassAfterSTLS(self) -> None:
        protocol, transport = self.connect(self.makeFactory(allowPlaintextAuth=False))
        self.send(protocol, transport, b"STLS\r\n")
        self.transcript(
            protocol,
            transport,
            [
                ("USER " + ALICE, ["+OK Send your password"]),
                ("PASS " + PASSWORD, ["+OK Logged in, 0 messages (0 octets)"]),
            ],
        )
        self.assertIs(protocol.state, State.TRANSACTION)
        self.assertEqual(self.authenticator.held, {ALICE: 1})

    def test_loginCountsMessages(self) -> None:
        self.deliver(FIRST)
        self.deliver(SECOND)
        protocol, transport = self.connect()
        size = sum(m.size for m in self.snapshot())
        self.transcript(
            protocol,
            transport,
            [("USER " + ALICE, ["+OK Send your password"]), ("PASS " + PASSWORD, ["+OK Logged in, 2 messages (%d octets)" % size])],
        )

    def test_userCaseInsensitiveCommands(self) -> None:
        protocol, transport = self.connect()
        self.transcript(protocol, transport, [("user " + ALICE, ["+OK Send your password"]), ("pAsS " + PASSWORD, ["+OK Logged in, 0 messages (0 octets)"])])

    def test_passwordWithSpaces(self) -> None:
        """
        RFC 1939 §7: the PASS argument is the whole rest of the line.
        """
        self.authenticator.passwords[ALICE] = "two  words "
        protocol, transport = self.connect()
        reply = self.lines(protocol, transport, b"USER alice@example.test\r\nPASS two  words \r\n")
        self.assertEqual(reply[-1], "+OK Logged in, 0 messages (0 octets)")

    def test_badPassword(self) -> None:
        protocol, transport = self.connect()
        self.transcript(
            protocol,
            transport,
            [("USER " + ALICE, ["+OK Send your password"]), ("PASS wrong", ["-ERR [AUTH] Authentication failed"])],
        )
        self.assertIs(protocol.state, State.AUTHORIZATION)
        self.assertEqual(self.authenticator.failures, [(ALICE, "192.168.1.1")])

    def test_unknownUserSameAnswer(self) -> None:
        """
        RFC 3206 §4: the failure does not reveal whether the user exists.
        """
        protocol, transport = self.connect()
        self.transcript(
            protocol,
            transport,
            [("USER nobody@example.test", ["+OK Send your password"]), ("PASS wrong", ["-ERR [AUTH] Authentication failed"])],
        )

    def test_passWithoutUser(self) -> None:
        protocol, transport = self.connect()
        self.transcript(protocol, transport, [("PASS " + PASSWORD, ["-ERR Send USER first"])])
        # A failed PASS forgets the USER too (RFC 1939 §7: start again).
        self.transcript(
            protocol,
            transport,
            [
                ("USER " + ALICE, ["+OK Send your password"]),
                ("PASS wrong", ["-ERR [AUTH] Authentication failed"]),
                ("PASS " + PASSWORD, ["-ERR Send USER first"]),
            ],
        )

    def test_userWithoutName(self) -> None:
        protocol, transport = self.connect()
        self.transcript(protocol, transport, [("USER", ["-ERR [AUTH] Invalid user name"]), ("USER ", ["-ERR [AUTH] Invalid user name"])])

    def test_emptyPassword(self) -> None:
        protocol, transport = self.connect()
        self.transcript(protocol, transport, [("USER " + ALICE, ["+OK Send your password"]), ("PASS", ["-ERR [AUTH] Authentication failed"])])

    def test_inUse(self) -> None:
        """
        RFC 2449 §8.1.2: a second session gets [IN-USE] until the first ends.
        """
        first, firstTransport = self.loggedIn()
        second, transport = self.connect()
        self.transcript(
            second,
            transport,
            [("USER " + ALICE, ["+OK Send your password"]), ("PASS " + PASSWORD, ["-ERR [IN-USE] Mailbox is locked by another session"])],
        )
        self.assertIs(second.state, State.AUTHORIZATION)
        first.connectionLost(None)
        self.transcript(
            second,
            transport,
            [("USER " + ALICE, ["+OK Send your password"]), ("PASS " + PASSWORD, ["+OK Logged in, 0 messages (0 octets)"])],
        )

    def test_authenticatorBroken(self) -> None:
        """
        Anything unexpected from the authenticator is logged and answered
        [SYS/TEMP].
        """
        self.authenticator.login = lambda *a: fail(RuntimeError("database on fire"))
        protocol, transport = self.connect()
        reply = self.lines(protocol, transport, b"USER alice@example.test\r\nPASS x\r\n")
        self.assertEqual(reply[-1], "-ERR [SYS/TEMP] Internal server error, try again later")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_loginBusy(self) -> None:
        """
        Issue 11: too many logins in progress (L{LoginBusy}), by USER/PASS
        or AUTH PLAIN, is answered [SYS/TEMP] without a traceback; it does
        not count towards C{max_errors}, so the session goes on and a
        retry may succeed.
        """
        self.limits = Limits(max_errors=2)
        protocol, transport = self.connect(self.makeFactory())
        login = self.authenticator.login
        self.authenticator.login = lambda *a: fail(LoginBusy())
        busy = "-ERR [SYS/TEMP] Too many login attempts in progress, try again later"
        plain = base64.b64encode(b"\0" + ALICE.encode() + b"\0" + PASSWORD.encode())
        for _ in range(2):
            reply = self.lines(protocol, transport, b"USER alice@example.test\r\nPASS x\r\n")
            self.assertEqual(reply, ["+OK Send your password", busy])
            self.assertEqual(self.lines(protocol, transport, b"AUTH PLAIN " + plain + b"\r\n"), [busy])
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.authenticator.login = login
        reply = self.lines(protocol, transport, b"AUTH PLAIN " + plain + b"\r\n")
        self.assertEqual(reply, ["+OK Logged in, 0 messages (0 octets)"])

    def test_snapshotFails(self) -> None:
        """
        The mailbox cannot be listed: [SYS/TEMP], still AUTHORIZATION, and
        the mailbox is released.
        """
        self.maildir.snapshot = lambda: fail(OSError("disk gone"))
        protocol, transport = self.connect()
        reply = self.lines(protocol, transport, b"USER alice@example.test\r\nPASS %s\r\n" % PASSWORD.encode())
        self.assertEqual(reply[-1], "-ERR [SYS/TEMP] Cannot open the mailbox, try again later")
        self.assertIs(protocol.state, State.AUTHORIZATION)
        self.assertEqual(self.authenticator.held, {})
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_slowAuthenticatorPipelining(self) -> None:
        """
        Commands pipelined after PASS wait until the login is decided
        (RFC 2449 §6.6).
        """
        pending: Deferred = Deferred()
        real = self.authenticator.login
        calls = []

        def login(credentials, peer, interface):
            calls.append((credentials.username, credentials.password, peer))
            return pending.addCallback(lambda _: self.successResultOf(real(credentials, peer, interface)))

        self.authenticator.login = login
        self.deliver(FIRST)
        protocol, transport = self.connect()
        reply = self.lines(protocol, transport, b"USER alice@example.test\r\nPASS %s\r\nSTAT\r\n" % PASSWORD.encode())
        self.assertEqual(reply, ["+OK Send your password"])
        self.assertEqual(calls, [(ALICE, PASSWORD.encode(), "192.168.1.1")])
        transport.clear()
        pending.callback(None)
        self.assertEqual(
            transport.value().split(b"\r\n")[:-1],
            [b"+OK Logged in, 1 messages (%d octets)" % self.snapshot()[0].size, b"+OK 1 %d" % self.snapshot()[0].size],
        )

    def test_disconnectDuringLogin(self) -> None:
        """
        A login that succeeds after the client left releases the mailbox.
        """
        pending: Deferred = Deferred()
        real = self.authenticator.login
        self.authenticator.login = lambda c, p, i: pending.addCallback(lambda _: self.successResultOf(real(c, p, i)))
        protocol, transport = self.connect()
        self.send(protocol, transport, b"USER alice@example.test\r\nPASS %s\r\n" % PASSWORD.encode())
        protocol.connectionLost(None)
        pending.callback(None)
        self.assertEqual(self.authenticator.held, {})

    def test_authPlainInitialResponse(self) -> None:
        """
        RFC 5034 §4 with an initial response (RFC 4616 message).
        """
        protocol, transport = self.connect()
        token = base64.b64encode(b"\0" + ALICE.encode() + b"\0" + PASSWORD.encode()).decode()
        self.transcript(protocol, transport, [("AUTH PLAIN " + token, ["+OK Logged in, 0 messages (0 octets)"])])
        self.assertIs(protocol.state, State.TRANSACTION)

    def test_authPlainContinuation(self) -> None:
        protocol, transport = self.connect()
        token = base64.b64encode(ALICE.encode() + b"\0" + ALICE.encode() + b"\0" + PASSWORD.encode()).decode()
        self.transcript(protocol, transport, [("auth plain", ["+ "]), (token, ["+OK Logged in, 0 messages (0 octets)"])])

    def test_authPlainWrongPassword(self) -> None:
        protocol, transport = self.connect()
        token = base64.b64encode(b"\0" + ALICE.encode() + b"\0wrong").decode()
        self.transcript(protocol, transport, [("AUTH PLAIN " + token, ["-ERR [AUTH] Authentication failed"])])
        token = base64.b64encode(b"\0nobody@example.test\0wrong").decode()
        self.transcript(protocol, transport, [("AUTH PLAIN", ["+ "]), (token, ["-ERR [AUTH] Authentication failed"])])

    def test_authPlainInUse(self) -> None:
        self.loggedIn()
        protocol, transport = self.connect()
        token = base64.b64encode(b"\0" + ALICE.encode() + b"\0" + PASSWORD.encode()).decode()
        self.transcript(protocol, transport, [("AUTH PLAIN " + token, ["-ERR [IN-USE] Mailbox is locked by another session"])])

    def test_authCancelled(self) -> None:
        protocol, transport = self.connect()
        self.transcript(
            protocol,
            transport,
            [("AUTH PLAIN", ["+ "]), ("*", ["-ERR Authentication cancelled"]), ("NOOP", ["-ERR Not logged in"])],
        )

    def test_authBadBase64(self) -> None:
        protocol, transport = self.connect()
        self.transcript(
            protocol,
            transport,
            [
                ("AUTH PLAIN", ["+ "]),
                ("not base64!", ["-ERR Invalid base64 in SASL response"]),
                ("AUTH PLAIN ####", ["-ERR Invalid base64 in SASL response"]),
            ],
        )

    def test_authMalformedPlain(self) -> None:
        protocol, transport = self.connect()
        token = base64.b64encode(b"no nul bytes").decode()
        self.transcript(protocol, transport, [("AUTH PLAIN " + token, ["-ERR [AUTH] Authentication failed"])])
        self.transcript(protocol, transport, [("AUTH PLAIN =", ["-ERR [AUTH] Authentication failed"])])

    def test_authOtherMechanism(self) -> None:
        protocol, transport = self.connect()
        self.transcript(
            protocol,
            transport,
            [
                ("AUTH CRAM-MD5", ["-ERR Unsupported authentication mechanism"]),
                ("AUTH", ["+OK Supported mechanisms follow", "PLAIN", "."]),
                ("AUTH PLAIN a b", ["-ERR Syntax: AUTH mechanism [initial-response]"]),
            ],
        )

    def test_transactionCommandsNeedLogin(self) -> None:
        protocol, transport = self.connect()
        for command in ("STAT", "LIST", "LIST 1", "UIDL", "RETR 1", "TOP 1 1", "DELE 1", "RSET", "NOOP"):
            self.transcript(protocol, transport, [(command, ["-ERR Not logged in"])])
        self.assertFalse(transport.disconnecting)

    def test_authorizationCommandsAfterLogin(self) -> None:
        protocol, transport = self.loggedIn()
        for command in ("USER " + ALICE, "PASS x", "AUTH PLAIN", "STLS"):
            self.transcript(protocol, transport, [(command, ["-ERR Command not valid in this state"])])

    def test_unknownCommand(self) -> None:
        protocol, transport = self.connect()
        self.transcript(protocol, transport, [("APOP alice 0123456789abcdef", ["-ERR Unknown command"]), ("HELO", ["-ERR Unknown command"]), ("", ["-ERR Unknown command"])])

    def test_quitInAuthorization(self) -> None:
        protocol, transport = self.connect()
        self.transcript(protocol, transport, [("QUIT", ["+OK pop.example.test POP3 mailnet signing off"])])
        self.assertTrue(transport.disconnecting)
        # Nothing more is read once the session is over.
        self.assertEqual(self.send(protocol, transport, b"NOOP\r\n"), b"")


class TransactionTests(POP3Mixin, SynchronousTestCase):
    """
    The TRANSACTION and UPDATE states against a real Maildir.
    """

    def setUp(self) -> None:
        super().setUp()
        for body in (FIRST, SECOND, THIRD):
            self.deliver(body)
        self.infos = self.snapshot()
        self.sizes = [m.size for m in self.infos]

    def test_stat(self) -> None:
        protocol, transport = self.loggedIn()
        self.transcript(protocol, transport, [("STAT", ["+OK 3 %d" % sum(self.sizes)])])

    def test_listSizesAreWireSizes(self) -> None:
        protocol, transport = self.loggedIn()
        self.transcript(
            protocol,
            transport,
            [
                (
                    "LIST",
                    ["+OK 3 messages (%d octets)" % sum(self.sizes)]
                    + ["%d %d" % (i + 1, len(onTheWire(readFile(m.path)))) for i, m in enumerate(self.infos)]
                    + ["."],
                ),
                ("LIST 2", ["+OK 2 %d" % self.sizes[1]]),
            ],
        )

    def test_uidl(self) -> None:
        protocol, transport = self.loggedIn()
        self.transcript(
            protocol,
            transport,
            [
                ("UIDL", ["+OK Unique-ID listing follows"] + ["%d %s" % (i + 1, m.uid) for i, m in enumerate(self.infos)] + ["."]),
                ("UIDL 3", ["+OK 3 %s" % self.infos[2].uid]),
            ],
        )

    def test_retrByteExact(self) -> None:
        """
        RETR sends the file as it is, dot-stuffed, then ".CRLF"; the octet
        count announced is the file size (RFC 1939 §7).
        """
        protocol, transport = self.loggedIn()
        for number, body in ((1, FIRST), (2, SECOND), (3, THIRD)):
            with open(self.infos[number - 1].path, "rb") as f:
                stored = f.read()
            # Stored with LF line endings, sent with CRLF: as received.
            self.assertEqual(stored, ((RP + "\r\n").encode() + body).replace(b"\r\n", b"\n"))
            stored = onTheWire(stored)
            stuffed = stored.replace(b"\r\n.", b"\r\n..")
            reply = self.send(protocol, transport, b"RETR %d\r\n" % number)
            self.assertEqual(reply, b"+OK %d octets\r\n" % len(stored) + stuffed + b".\r\n")

    def test_retrDotStuffing(self) -> None:
        protocol, transport = self.loggedIn()
        self.assertEqual(
            self.lines(protocol, transport, b"RETR 3\r\n"),
            ["+OK %d octets" % self.sizes[2], RP, "Subject: three", "", "..", "."],
        )

    def test_top(self) -> None:
        """
        RFC 1939 §7: TOP sends the headers, the blank line and n body lines.
        """
        protocol, transport = self.loggedIn()
        self.transcript(
            protocol,
            transport,
            [
                ("TOP 2 0", ["+OK Top of message follows", RP, "Subject: two", "X-Other: y", "", "."]),
                ("TOP 2 1", ["+OK Top of message follows", RP, "Subject: two", "X-Other: y", "", "line 1", "."]),
                (
                    "TOP 2 3",
                    ["+OK Top of message follows", RP, "Subject: two", "X-Other: y", "", "line 1", "line 2", "..line 3 starts with a dot", "."],
                ),
                (
                    "TOP 2 100",
                    [
                        "+OK Top of message follows",
                        RP,
                        "Subject: two",
                        "X-Other: y",
                        "",
                        "line 1",
                        "line 2",
                        "..line 3 starts with a dot",
                        "line 4",
                        ".",
                    ],
                ),
            ],
        )

    def test_topDoesNotMarkSeen(self) -> None:
        protocol, transport = self.loggedIn()
        self.send(protocol, transport, b"TOP 1 1\r\nQUIT\r\n")
        self.assertEqual(len(self.files("new")), 3)
        self.assertEqual(self.files("cur"), [])

    def test_topHeadersOnlyMessage(self) -> None:
        self.deliver(b"Subject: no body")
        protocol, transport = self.loggedIn()
        self.transcript(protocol, transport, [("TOP 4 5", ["+OK Top of message follows", RP, "Subject: no body", "."])])

    def test_badMessageNumbers(self) -> None:
        """
        Bad numbers, deleted messages and missing arguments get -ERR; the
        session goes on.
        """
        self.limits = Limits(max_errors=100)
        protocol, transport = self.loggedIn(self.makeFactory())
        self.transcript(
            protocol,
            transport,
            [
                ("RETR 0", ["-ERR Invalid message number"]),
                ("RETR 99999", ["-ERR No such message"]),
                ("RETR 4", ["-ERR No such message"]),
                ("RETR -1", ["-ERR Invalid message number"]),
                ("RETR +1", ["-ERR Invalid message number"]),
                ("RETR 01", ["-ERR Invalid message number"]),
                ("RETR 1.0", ["-ERR Invalid message number"]),
                ("RETR 99999999999999999999", ["-ERR Invalid message number"]),
                ("RETR", ["-ERR Syntax: RETR message"]),
                ("RETR 1 2", ["-ERR Syntax: RETR message"]),
                ("DELE x", ["-ERR Invalid message number"]),
                ("DELE", ["-ERR Syntax: DELE message"]),
                ("LIST 0", ["-ERR Invalid message number"]),
                ("LIST 9", ["-ERR No such message"]),
                ("UIDL -3", ["-ERR Invalid message number"]),
                ("TOP 1", ["-ERR Syntax: TOP message lines"]),
                ("TOP 1 -1", ["-ERR Invalid line count"]),
                ("TOP 1 x", ["-ERR Invalid line count"]),
                ("TOP 0 1", ["-ERR Invalid message number"]),
                ("STAT now", ["-ERR Syntax: STAT"]),
                ("NOOP", ["+OK"]),
            ],
        )
        self.assertFalse(transport.disconnecting)

    def test_deleteMarksOnly(self) -> None:
        """
        DELE hides a message from STAT, LIST and UIDL, and refuses access to
        it; RSET brings it back.  Numbers do not shift.
        """
        protocol, transport = self.loggedIn()
        self.transcript(
            protocol,
            transport,
            [
                ("DELE 2", ["+OK Message 2 deleted"]),
                ("DELE 2", ["-ERR Message 2 is deleted"]),
                ("STAT", ["+OK 2 %d" % (self.sizes[0] + self.sizes[2])]),
                ("LIST", ["+OK 2 messages (%d octets)" % (self.sizes[0] + self.sizes[2]), "1 %d" % self.sizes[0], "3 %d" % self.sizes[2], "."]),
                ("UIDL", ["+OK Unique-ID listing follows", "1 " + self.infos[0].uid, "3 " + self.infos[2].uid, "."]),
                ("LIST 2", ["-ERR Message 2 is deleted"]),
                ("UIDL 2", ["-ERR Message 2 is deleted"]),
                ("RETR 2", ["-ERR Message 2 is deleted"]),
                ("TOP 2 0", ["-ERR Message 2 is deleted"]),
                ("RSET", ["+OK 3 messages (%d octets)" % sum(self.sizes)]),
                ("LIST 2", ["+OK 2 %d" % self.sizes[1]]),
            ],
        )
        self.assertEqual(len(self.snapshot()), 3)

    def test_quitRemovesDeleted(self) -> None:
        """
        RFC 1939 §6: QUIT removes what was deleted, then answers +OK and
        closes, releasing the mailbox.
        """
        protocol, transport = self.loggedIn()
        self.transcript(
            protocol,
            transport,
            [("DELE 1", ["+OK Message 1 deleted"]), ("DELE 3", ["+OK Message 3 deleted"]), ("QUIT", ["+OK pop.example.test POP3 mailnet signing off (1 messages left)"])],
        )
        self.assertTrue(transport.disconnecting)
        self.assertEqual([m.uid for m in self.snapshot()], [self.infos[1].uid])
        self.assertEqual(self.authenticator.held, {})
        self.assertIs(protocol.state, State.UPDATE)
        protocol.connectionLost(None)
        self.assertEqual(self.factory.connections, 0)

    def test_quitAfterRset(self) -> None:
        protocol, transport = self.loggedIn()
        self.send(protocol, transport, b"DELE 1\r\nRSET\r\nQUIT\r\n")
        self.assertEqual(len(self.snapshot()), 3)

    def test_droppedConnectionRemovesNothing(self) -> None:
        protocol, transport = self.loggedIn()
        self.send(protocol, transport, b"DELE 1\r\nDELE 2\r\nRETR 3\r\n")
        protocol.connectionLost(None)
        self.assertEqual([m.uid for m in self.snapshot()], [m.uid for m in self.infos])
        self.assertEqual(len(self.files("new")), 3)
        self.assertEqual(self.authenticator.held, {})
        self.assertEqual(self.factory.connections, 0)

    def test_retrievedMovedToCurAtQuit(self) -> None:
        """
        Messages sent by RETR are marked seen (new/ to cur/) at QUIT; their
        UIDL stays the same.
        """
        protocol, transport = self.loggedIn()
        self.send(protocol, transport, b"RETR 2\r\n")
        self.assertEqual(len(self.files("new")), 3)
        self.send(protocol, transport, b"QUIT\r\n")
        self.assertEqual(len(self.files("new")), 2)
        [name] = self.files("cur")
        self.assertTrue(name.startswith(self.infos[1].uid) and name.endswith(":2,S"), name)
        self.assertEqual([m.uid for m in self.snapshot()], [m.uid for m in self.infos])

    def test_retrievedAndDeleted(self) -> None:
        protocol, transport = self.loggedIn()
        self.send(protocol, transport, b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
        self.assertEqual(self.files("cur"), [])
        self.assertEqual(len(self.files("new")), 2)

    def test_removeFails(self) -> None:
        """
        If removal fails QUIT answers [SYS/TEMP]; the mailbox is released
        and the connection closed.
        """
        self.maildir.remove = lambda infos: fail(OSError("read-only file system"))
        protocol, transport = self.loggedIn()
        reply = self.lines(protocol, transport, b"DELE 1\r\nQUIT\r\n")
        self.assertEqual(reply[-1], "-ERR [SYS/TEMP] Deleted messages could not be removed; they are kept")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.authenticator.held, {})
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_quitWaitsForRemoval(self) -> None:
        """
        +OK comes only once the removal is durable, and the mailbox stays
        locked until then even if the client has gone.
        """
        pending: Deferred = Deferred()
        real = self.maildir.remove
        self.maildir.remove = lambda infos: pending.addCallback(lambda _: real(infos))
        protocol, transport = self.loggedIn()
        self.assertEqual(self.lines(protocol, transport, b"DELE 1\r\nQUIT\r\n"), ["+OK Message 1 deleted"])
        protocol.connectionLost(None)
        self.assertEqual(self.authenticator.held, {ALICE: 1})
        pending.callback(None)
        self.assertEqual(len(self.snapshot()), 2)
        self.assertEqual(self.authenticator.held, {})

    def test_snapshotAtLogin(self) -> None:
        """
        Mail delivered during a session shows up in the next one only.
        """
        protocol, transport = self.loggedIn()
        self.deliver(b"Subject: late\r\n\r\nlate\r\n")
        self.transcript(protocol, transport, [("STAT", ["+OK 3 %d" % sum(self.sizes)]), ("RETR 4", ["-ERR No such message"])])
        self.send(protocol, transport, b"DELE 1\r\nQUIT\r\n")
        protocol, transport = self.loggedIn()
        self.assertEqual(self.lines(protocol, transport, b"STAT\r\n")[0][:6], "+OK 3 ")
        self.assertIn("Subject: late", self.lines(protocol, transport, b"RETR 3\r\n"))

    def test_uidlStableAcrossRestart(self) -> None:
        protocol, transport = self.loggedIn()
        before = self.lines(protocol, transport, b"RETR 1\r\nUIDL\r\n")
        before = before[before.index("+OK Unique-ID listing follows") :]
        self.send(protocol, transport, b"QUIT\r\n")
        fresh = self.makeFactory()
        protocol, transport = self.loggedIn(fresh)
        self.assertEqual(self.lines(protocol, transport, b"UIDL\r\n"), before)

    def test_foreignUid(self) -> None:
        """
        A file whose name is not a valid unique-id gets a stable hash.
        """
        name = "1700000000.weird name with spaces " + "x" * 80
        with open(os.path.join(self.maildir.path, "cur", name + ":2,S"), "wb") as f:
            f.write(b"Subject: foreign\r\n\r\nhi\r\n")
        protocol, transport = self.loggedIn()
        uids = self.lines(protocol, transport, b"UIDL\r\n")[1:-1]
        expected = uidlFor(name)
        self.assertIn(expected, [u.split(" ", 1)[1] for u in uids])
        self.assertNotEqual(expected, name)
        self.assertRegex(expected, r"^[\x21-\x7e]{1,70}$")

    def test_bareLineFeeds(self) -> None:
        """
        A file written by another MDA with bare LF is sent with CRLF.
        """
        with open(os.path.join(self.maildir.path, "new", "1900000000.M1P1Q1.other"), "wb") as f:
            f.write(b"Subject: lf\n\n.dot\nend")
        protocol, transport = self.loggedIn()
        reply = self.send(protocol, transport, b"RETR 4\r\n")
        self.assertEqual(reply, b"+OK 21 octets\r\nSubject: lf\r\n\r\n..dot\r\nend\r\n.\r\n")
        reply = self.send(protocol, transport, b"TOP 4 1\r\n")
        self.assertEqual(reply, b"+OK Top of message follows\r\nSubject: lf\r\n\r\n..dot\r\n.\r\n")

    def test_messageGone(self) -> None:
        protocol, transport = self.loggedIn()
        os.unlink(self.infos[0].path)
        self.transcript(protocol, transport, [("RETR 1", ["-ERR [SYS/PERM] Message 1 is no longer available"]), ("NOOP", ["+OK"])])

    def test_emptyMailbox(self) -> None:
        for info in self.infos:
            os.unlink(info.path)
        protocol, transport = self.loggedIn()
        self.transcript(
            protocol,
            transport,
            [
                ("STAT", ["+OK 0 0"]),
                ("LIST", ["+OK 0 messages (0 octets)", "."]),
                ("UIDL", ["+OK Unique-ID listing follows", "."]),
                ("RETR 1", ["-ERR No such message"]),
                ("QUIT", ["+OK pop.example.test POP3 mailnet signing off (0 messages left)"]),
            ],
        )

    def test_unexpectedError(self) -> None:
        """
        A bug in a handler is logged with its traceback and answered
        [SYS/TEMP]; the session goes on.
        """
        protocol, transport = self.loggedIn()
        protocol._messages = None
        self.assertEqual(self.lines(protocol, transport, b"STAT\r\n"), ["-ERR [SYS/TEMP] Internal server error, try again later"])
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertFalse(transport.disconnecting)


class VerbCaseTests(POP3Mixin, SynchronousTestCase):
    """
    RFC 1939 §3: keywords are case-insensitive, whatever the spelling.
    """

    def test_anyCase(self) -> None:
        self.deliver(FIRST)
        [info] = self.snapshot()
        protocol, transport = self.loggedIn()
        for verb in (b"STAT", b"stat", b"Stat", b"sTaT"):
            self.assertEqual(self.lines(protocol, transport, verb + b"\r\n"), ["+OK 1 %d" % info.size])
        for line in (b"STAT1", b"ST4T", b"STATS", b"\xc3\xa9", b"STA\x00"):
            self.assertEqual(self.lines(protocol, transport, line + b"\r\n"), ["-ERR Unknown command"], line)


class StreamingTests(POP3Mixin, SynchronousTestCase):
    """
    RETR and TOP go through a pull producer, chunk by chunk.
    """

    def test_largeMessageChunked(self) -> None:
        """
        A large message is written one bounded chunk per resumeProducing,
        never whole, and arrives byte for byte.
        """
        line = b"x" * 998 + b"\r\n"
        body = b"Subject: big\r\n\r\n" + line * 3000 + b".starts with a dot\r\n"
        self.deliver(body)
        [info] = self.snapshot()
        protocol, transport = self.loggedIn()
        transport.clear()
        del transport.writes[:]
        protocol.dataReceived(b"RETR 1\r\n")
        self.assertIsNotNone(transport.producer)
        self.assertFalse(transport.streaming)
        # Registering wrote the +OK line only: data flows as the consumer asks.
        self.assertEqual(transport.value(), b"+OK %d octets\r\n" % info.size)
        transport.producer.resumeProducing()
        self.assertLessEqual(len(transport.value()), CHUNK_SIZE * 2)
        self.pump(transport)
        self.assertTrue(max(transport.writes) <= CHUNK_SIZE * 2, max(transport.writes))
        self.assertGreater(len(transport.writes), info.size // CHUNK_SIZE)
        with open(info.path, "rb") as f:
            stored = onTheWire(f.read())
        self.assertEqual(transport.value(), b"+OK %d octets\r\n" % info.size + stored.replace(b"\r\n.", b"\r\n..") + b".\r\n")

    def test_dotAtChunkBoundary(self) -> None:
        """
        A line that begins with "." exactly at a chunk boundary is stuffed,
        and a CRLF split between chunks stays one line ending; for every
        chunk size.
        """
        self.deliver(b"Subject: dots\r\n\r\n.a\r\n..\r\n.\r\nb.\r\n\r\n.\r\n.")
        [info] = self.snapshot()
        with open(info.path, "rb") as f:
            stored = onTheWire(f.read())
        expected = b"+OK %d octets\r\n" % info.size + stored.replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n"
        for size in range(1, len(stored) + 2):
            self.factory.chunkSize = size
            protocol, transport = self.loggedIn()
            self.assertEqual(self.send(protocol, transport, b"RETR 1\r\n"), expected, size)
            protocol.connectionLost(None)

    def test_topEveryChunkSize(self) -> None:
        """
        TOP counts lines correctly however the file is read.
        """
        self.deliver(b"Subject: t\r\nX: y\r\n\r\n.one\r\ntwo\r\n\r\nfour\r\n")
        [info] = self.snapshot()
        expected = b"+OK Top of message follows\r\n" + (RP + "\r\n").encode() + b"Subject: t\r\nX: y\r\n\r\n..one\r\ntwo\r\n\r\n.\r\n"
        for size in range(1, info.size + 2):
            self.factory.chunkSize = size
            protocol, transport = self.loggedIn()
            self.assertEqual(self.send(protocol, transport, b"TOP 1 3\r\n"), expected, size)
            protocol.connectionLost(None)

    def test_dotExactlyAtBoundary(self) -> None:
        """
        The named case: the chunk ends with CRLF and the next one starts
        with ".".
        """
        stored = (RP + "\r\n").encode() + b"Subject: x\r\n\r\n"
        self.deliver(b"Subject: x\r\n\r\n.hidden\r\n")
        self.factory.chunkSize = len(stored)
        protocol, transport = self.loggedIn()
        reply = self.send(protocol, transport, b"RETR 1\r\n")
        self.assertIn(b"\r\n\r\n..hidden\r\n.\r\n", reply)

    def test_pipelinedCommandsWaitForRetr(self) -> None:
        """
        RFC 2449 §6.6: commands that arrive while a message streams are
        answered after it, in order.
        """
        self.deliver(FIRST + b"more\r\n" * 100)
        self.factory.chunkSize = 64
        protocol, transport = self.loggedIn()
        transport.clear()
        protocol.dataReceived(b"RETR 1\r\nNOOP\r\nSTAT\r\n")
        self.assertNotIn(b"\r\n+OK\r\n", transport.value())
        protocol.dataReceived(b"UIDL 1\r\n")
        self.pump(transport)
        reply = transport.value()
        self.assertTrue(reply.endswith(b"more\r\n.\r\n+OK\r\n+OK 1 %d\r\n+OK 1 %s\r\n" % (self.snapshot()[0].size, self.snapshot()[0].uid.encode())), reply[-200:])

    def test_pipelinedRetrs(self) -> None:
        """
        Many pipelined RETRs finish one after the other without the stack
        growing with their number (the consumer calls back synchronously).
        """
        self.deliver(b"Subject: s\r\n\r\nx\r\n")
        [info] = self.snapshot()
        protocol, transport = self.loggedIn()

        class EagerTransport(TLSStringTransport):
            # Like a real transport: pulls at once when registered.
            def registerProducer(self, producer, streaming):
                super().registerProducer(producer, streaming)
                producer.resumeProducing()

            def unregisterProducer(self):
                super().unregisterProducer()

        eager = EagerTransport()
        protocol.transport = eager
        protocol.dataReceived(b"RETR 1\r\n" * 2000 + b"NOOP\r\n")
        self.pump(eager)
        self.assertEqual(eager.value().count(b"+OK %d octets\r\n" % info.size), 2000)
        self.assertTrue(eager.value().endswith(b".\r\n+OK\r\n"))

    def test_disconnectWhileStreaming(self) -> None:
        self.deliver(FIRST * 100)
        self.factory.chunkSize = 16
        protocol, transport = self.loggedIn()
        protocol.dataReceived(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
        producer = transport.producer
        producer.resumeProducing()
        protocol.connectionLost(None)
        producer.stopProducing()
        self.assertEqual(len(self.snapshot()), 1)
        self.assertEqual(self.files("cur"), [])
        self.assertEqual(self.authenticator.held, {})

    def test_readErrorAbortsConnection(self) -> None:
        """
        If the file cannot be read half way, the connection is aborted: a
        truncated message must not look complete.
        """
        self.deliver(FIRST)
        protocol, transport = self.loggedIn()
        # Streamed, not read whole: the +OK line goes out before the read.
        self.factory.chunkSize = 8
        real = self.maildir.open

        class Broken:
            def __init__(self, f):
                self.f = f

            def read(self, n):
                raise OSError("I/O error")

            def close(self):
                self.f.close()

        self.maildir.open = lambda info: Broken(real(info))
        protocol.dataReceived(b"RETR 1\r\nNOOP\r\n")
        self.pump(transport)
        self.assertTrue(transport.disconnected)
        self.assertNotIn(b"\r\n.\r\n", transport.value())
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


class WholeMessageTests(POP3Mixin, SynchronousTestCase):
    """
    A message no larger than a chunk is sent by RETR in one write, without
    a producer; output written that way is bounded until the transport is
    seen to drain.
    """

    def test_oneWriteNoProducer(self) -> None:
        self.deliver(SECOND)
        [info] = self.snapshot()
        protocol, transport = self.loggedIn()
        transport.clear()
        del transport.writes[:]
        protocol.dataReceived(b"RETR 1\r\nNOOP\r\n")
        # No producer, and the pipelined NOOP already answered, in the
        # same write.
        self.assertIsNone(transport.producer)
        with open(info.path, "rb") as f:
            stored = onTheWire(f.read())
        message = b"+OK %d octets\r\n" % info.size + stored.replace(b"\r\n.", b"\r\n..") + b".\r\n"
        self.assertEqual(transport.value(), message + b"+OK\r\n")
        self.assertEqual(transport.writes, [len(message) + len(b"+OK\r\n")])
        # RFC 1939 §6: marked seen at QUIT, as a streamed one.
        self.send(protocol, transport, b"QUIT\r\n")
        self.assertEqual(len(self.files("cur")), 1)

    def test_pipelinedRepliesInOneWrite(self) -> None:
        """
        The replies of pipelined commands read in one piece are written
        together, in order, in one transport write.
        """
        self.deliver(FIRST)
        self.deliver(SECOND)
        first, second = self.snapshot()
        protocol, transport = self.loggedIn()
        transport.clear()
        del transport.writes[:]
        protocol.dataReceived(b"RETR 1\r\nSTAT\r\nRETR 2\r\nBOGUS\r\nUIDL 1\r\nNOOP\r\n")
        reply = transport.value()
        self.assertEqual(transport.writes, [len(reply)])
        lines = reply.split(b"\r\n")
        self.assertEqual(lines[0], b"+OK %d octets" % first.size)
        self.assertIn(b"+OK 2 %d" % (first.size + second.size), lines)
        self.assertIn(b"+OK %d octets" % second.size, lines)
        self.assertEqual(lines[-4:], [b"-ERR Unknown command", lines[-3], b"+OK", b""])
        self.assertTrue(lines[-3].startswith(b"+OK 1 "))

    def test_topWhole(self) -> None:
        """
        TOP of a small message is cut in memory and sent like RETR: no
        producer, one write with the answers that follow.
        """
        self.deliver(SECOND)
        protocol, transport = self.loggedIn()
        transport.clear()
        del transport.writes[:]
        protocol.dataReceived(b"TOP 1 1\r\nNOOP\r\n")
        self.assertIsNone(transport.producer)
        self.assertEqual(
            transport.value().split(b"\r\n"),
            [b"+OK Top of message follows", RP.encode(), b"Subject: two", b"X-Other: y", b"", b"line 1", b".", b"+OK", b""],
        )
        self.assertEqual(transport.writes, [len(transport.value())])

    def test_gatheredRepliesPrecedeTheClose(self) -> None:
        """
        Replies gathered in a pass are written before the connection is
        closed (QUIT, too many errors): a transport drops what is written
        after loseConnection.
        """

        class Closing(TLSStringTransport):
            def write(self, data: bytes) -> None:
                if not self.disconnecting:
                    super().write(data)

        self.limits = Limits(max_errors=2)
        for data, last in ((b"NOOP\r\nQUIT\r\n", b"signing off"), (b"BOGUS\r\nBOGUS\r\nNOOP\r\n", b"too many errors")):
            protocol = self.makeFactory().buildProtocol(None)
            transport = Closing()
            protocol.makeConnection(transport)
            protocol.dataReceived(data)
            self.assertTrue(transport.disconnecting)
            lines = transport.value().split(b"\r\n")
            self.assertEqual(len(lines), 4, lines)
            self.assertIn(last, lines[-2])

    def test_readFailsBeforeAnything(self) -> None:
        """
        A small message that cannot be read is answered C{-ERR [SYS/TEMP]}
        before anything of it is sent; the session goes on.
        """
        self.deliver(FIRST)
        protocol, transport = self.loggedIn()

        def broken(info, limit):
            raise OSError("I/O error")

        self.maildir.readWhole = broken
        self.assertEqual(
            self.lines(protocol, transport, b"RETR 1\r\nNOOP\r\n"),
            ["-ERR [SYS/TEMP] Cannot read message 1, try again later", "+OK"],
        )
        self.assertFalse(transport.disconnected)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_movedMeanwhile(self) -> None:
        """
        A small message that another session moved from new/ to cur/ since
        the listing is still sent, whole.
        """
        self.deliver(FIRST)
        protocol, transport = self.loggedIn()
        [info] = self.snapshot()
        stored = onTheWire(readFile(info.path))
        os.rename(info.path, os.path.join(self.maildir.path, "cur", os.path.basename(info.path) + ":2,S"))
        reply = self.send(protocol, transport, b"RETR 1\r\n")
        self.assertEqual(reply, b"+OK %d octets\r\n" % info.size + stored + b".\r\n")
        self.assertTrue(stored.endswith(FIRST))

    def test_chunkSizeIsTheLimit(self) -> None:
        """
        A message of exactly one chunk is sent whole; one octet more and
        it is streamed.
        """
        self.deliver(FIRST)
        [info] = self.snapshot()
        for size, whole in ((info.size, True), (info.size - 1, False)):
            self.factory.chunkSize = size
            protocol, transport = self.loggedIn()
            transport.clear()
            protocol.dataReceived(b"RETR 1\r\n")
            self.assertEqual(transport.producer is None, whole, size)
            self.pump(transport)
            self.assertTrue(transport.value().endswith(b"first body\r\n.\r\n"), size)
            protocol.connectionLost(None)

    def test_largerThanListed(self) -> None:
        """
        A file that grew after the listing (another program) is streamed
        whole, not cut at the listed size.
        """
        self.deliver(FIRST)
        [info] = self.snapshot()
        protocol, transport = self.loggedIn()
        self.factory.chunkSize = info.size
        with open(info.path, "ab") as f:
            f.write(b"more\r\n" * 10)
        transport.clear()
        protocol.dataReceived(b"RETR 1\r\n")
        self.assertIsNotNone(transport.producer)
        self.pump(transport)
        self.assertTrue(transport.value().endswith(b"first body\r\n" + b"more\r\n" * 10 + b".\r\n"))

    def test_pipelinedWithoutReadingBounded(self) -> None:
        """
        RFC 2449 §6.6: a client that pipelines RETRs and does not read
        gets at most about L{MAX_UNDRAINED_OUTPUT} octets written before
        a producer waits for the transport; then the rest follow, in order.
        """
        body = b"Subject: s\r\n\r\n" + b"y" * 4000 + b"\r\n"
        self.deliver(body)
        [info] = self.snapshot()
        protocol, transport = self.loggedIn()
        transport.clear()
        count = 3 * MAX_UNDRAINED_OUTPUT // info.size
        protocol.dataReceived(b"RETR 1\r\n" * count + b"NOOP\r\n")
        self.assertIsNotNone(transport.producer)
        self.assertLessEqual(len(transport.value()), MAX_UNDRAINED_OUTPUT + 2 * info.size)
        self.pump(transport)
        reply = transport.value()
        self.assertEqual(reply.count(b"+OK %d octets\r\n" % info.size), count)
        self.assertEqual(reply.count(b"y\r\n.\r\n"), count)
        self.assertTrue(reply.endswith(b".\r\n+OK\r\n"))


class DotStufferTests(SynchronousTestCase):
    """
    L{_wire.DotStuffer} gives the same output however its input is split.
    """

    def stuffWhole(self, data: bytes) -> bytes:
        s = _wire.DotStuffer()
        return s.feed(data) + s.end()

    def test_everySplit(self) -> None:
        samples = [
            b".a\r\n.b\r\n",
            b"a\r\n.\r\n..\r\n",
            b"a\n.b\nc\r\n.",
            b"x\r",
            b"\r\n\r\n.",
            b"",
        ]
        for sample in samples:
            whole = self.stuffWhole(sample)
            for i in range(len(sample) + 1):
                for j in range(i, len(sample) + 1):
                    s = _wire.DotStuffer()
                    out = s.feed(sample[:i]) + s.feed(sample[i:j]) + s.feed(sample[j:]) + s.end()
                    self.assertEqual(out, whole, (sample, i, j))

    def test_randomSplitsAgainstReference(self) -> None:
        """
        Longer messages with bare LFs, dotted lines and CRs at chunk ends,
        cut anywhere, against the rules applied to the whole message: a
        bare LF becomes CRLF, a line starting with "." gets another.
        """
        import random
        import re

        def reference(data: bytes) -> bytes:
            fixed = re.sub(rb"(?<!\r)\n", b"\r\n", data)
            stuffed = fixed.replace(b"\n.", b"\n..")
            if stuffed.startswith(b"."):
                stuffed = b"." + stuffed
            if not fixed or fixed.endswith(b"\n"):
                return stuffed + b".\r\n"
            if fixed.endswith(b"\r"):
                return stuffed + b"\n.\r\n"
            return stuffed + b"\r\n.\r\n"

        rng = random.Random(1939)
        pieces = [b"a", b"text line", b".", b"..", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\n.", b"\n.", b"x" * 200]
        for _ in range(2000):
            data = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
            cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 6)))
            s = _wire.DotStuffer()
            out = [s.feed(data[a:b]) for a, b in zip([0] + cuts, cuts + [len(data)])]
            self.assertEqual(b"".join(out) + s.end(), reference(data), (data, cuts))

    def test_wholeAgainstReference(self) -> None:
        """
        L{_wire.stuffed} (a whole message at once) gives what a
        L{_wire.DotStuffer} gives, for CRLF, LF-only and mixed input.
        """
        import random

        rng = random.Random(2449)
        for pieces in (
            [b"a", b"text", b".", b"\r\n", b"\r\n.", b"x" * 100],
            [b"a", b"text", b".", b"..", b"\n", b"\n.", b"x" * 100],
            [b"a", b".", b"\r\n", b"\n", b"\r", b"\n.", b"\r\n."],
        ):
            for _ in range(500):
                data = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
                self.assertEqual(_wire.stuffed(data), self.stuffWhole(data), data)

    def test_values(self) -> None:
        self.assertEqual(_wire.stuffed(b"a\nb\n.c\n"), b"a\r\nb\r\n..c\r\n.\r\n")
        self.assertEqual(_wire.stuffed(b""), b".\r\n")
        self.assertEqual(self.stuffWhole(b""), b".\r\n")
        self.assertEqual(self.stuffWhole(b".a\r\n"), b"..a\r\n.\r\n")
        self.assertEqual(self.stuffWhole(b"a\nb"), b"a\r\nb\r\n.\r\n")
        self.assertEqual(self.stuffWhole(b"a\r"), b"a\r\n.\r\n")
        self.assertEqual(self.stuffWhole(b"a\r\n.\r\n"), b"a\r\n..\r\n.\r\n")


class LimitTests(POP3Mixin, SynchronousTestCase):
    """
    Idle timeout, connection limit, error limit.
    """

    def test_idleTimeout(self) -> None:
        """
        After limits.pop3_idle_timeout seconds without a command the server
        says -ERR and closes; nothing is removed.
        """
        self.deliver(FIRST)
        protocol, transport = self.loggedIn()
        self.send(protocol, transport, b"DELE 1\r\n")
        self.clock.advance(self.limits.pop3_idle_timeout - 1)
        self.send(protocol, transport, b"NOOP\r\n")
        self.clock.advance(self.limits.pop3_idle_timeout - 1)
        self.assertFalse(transport.disconnecting)
        transport.clear()
        self.clock.advance(1)
        self.assertEqual(transport.value(), b"-ERR Idle timeout, closing connection\r\n")
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(None)
        self.assertEqual(len(self.snapshot()), 1)
        self.assertEqual(self.authenticator.held, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_idleTimeoutDuringLogin(self) -> None:
        """
        A login decided after the session timed out releases the mailbox
        and says nothing more.
        """
        pending: Deferred = Deferred()
        real = self.authenticator.login
        self.authenticator.login = lambda c, p, i: pending.addCallback(lambda _: self.successResultOf(real(c, p, i)))
        protocol, transport = self.connect()
        self.send(protocol, transport, b"USER alice@example.test\r\nPASS %s\r\n" % PASSWORD.encode())
        transport.clear()
        self.clock.advance(self.limits.pop3_idle_timeout)
        pending.callback(None)
        self.assertEqual(transport.value(), b"-ERR Idle timeout, closing connection\r\n")
        self.assertEqual(self.authenticator.held, {})
        self.assertIs(protocol.state, State.AUTHORIZATION)

    def test_idleTimeoutAtLeastTenMinutes(self) -> None:
        """RFC 1939 §3: the autologout timer is at least 10 minutes."""
        self.assertGreaterEqual(Limits().pop3_idle_timeout, 600)

    def test_idleTimeoutWhileStreaming(self) -> None:
        """
        A client that stops reading in the middle of a message is cut off
        (no -ERR line inside the message).
        """
        self.deliver(FIRST * 10)
        self.factory.chunkSize = 16
        protocol, transport = self.loggedIn()
        protocol.dataReceived(b"RETR 1\r\n")
        transport.producer.resumeProducing()
        transport.clear()
        self.clock.advance(self.limits.pop3_idle_timeout)
        self.assertTrue(transport.disconnected)
        self.assertIsNone(transport.producer)
        self.assertEqual(transport.value(), b"")

    def test_streamingCountsAsActivity(self) -> None:
        self.deliver(FIRST * 10)
        self.factory.chunkSize = 16
        protocol, transport = self.loggedIn()
        protocol.dataReceived(b"RETR 1\r\n")
        for _ in range(5):
            self.clock.advance(self.limits.pop3_idle_timeout - 1)
            transport.producer.resumeProducing()
        self.assertFalse(transport.disconnecting)
        protocol.connectionLost(None)

    def test_closeGrace(self) -> None:
        """
        A closing connection whose client does not read is aborted.
        """
        protocol, transport = self.connect()
        self.send(protocol, transport, b"QUIT\r\n")
        self.assertFalse(transport.disconnected)
        self.clock.advance(60)
        self.assertTrue(transport.disconnected)

    def test_maxConnections(self) -> None:
        self.limits = Limits(max_connections=2)
        factory = self.makeFactory()
        first, _ = self.connect(factory)
        second, _ = self.connect(factory)
        third, transport = self.connect(factory)
        self.assertEqual(transport.value(), b"-ERR [SYS/TEMP] Too many connections, try again later\r\n")
        self.assertTrue(transport.disconnecting)
        third.connectionLost(None)
        self.assertEqual(factory.connections, 2)
        first.connectionLost(None)
        fourth, transport = self.connect(factory)
        self.assertEqual(transport.value(), b"+OK pop.example.test POP3 mailnet ready\r\n")
        self.assertEqual(factory.connections, 2)

    def test_maxErrors(self) -> None:
        self.limits = Limits(max_errors=3)
        protocol, transport = self.connect(self.makeFactory())
        reply = self.lines(protocol, transport, b"BOGUS\r\nUSER ../x\r\nSTAT\r\nNOOP\r\n")
        self.assertEqual(reply, ["-ERR Unknown command", "-ERR [AUTH] Invalid user name", "-ERR too many errors"])
        self.assertTrue(transport.disconnecting)

    def test_authFailuresCount(self) -> None:
        self.limits = Limits(max_errors=2)
        protocol, transport = self.connect(self.makeFactory())
        reply = self.lines(protocol, transport, b"USER a@example.test\r\nPASS x\r\nUSER a@example.test\r\nPASS y\r\n")
        self.assertEqual(reply[-1], "-ERR too many errors")
        self.assertTrue(transport.disconnecting)


class HelperTests(SynchronousTestCase):
    def test_uidlFor(self) -> None:
        self.assertEqual(uidlFor("1700000000.M1P2Q3.host"), "1700000000.M1P2Q3.host")
        for bad in ("", "a b", "x" * 71, "caf\u00e9", "a\x7fb", "\udcff"):
            hashed = uidlFor(bad)
            self.assertRegex(hashed, r"^[\x21-\x7e]{1,70}$")
            self.assertEqual(hashed, uidlFor(bad))
        self.assertNotEqual(uidlFor("a b"), uidlFor("a c"))

    def test_loginNames(self) -> None:
        self.assertTrue(isAcceptableLoginName(ALICE))
        self.assertTrue(isAcceptableLoginName("j\u00f6rg@example.test"))
        for bad in ("", "../etc/passwd", "a/b@example.test", "a\\b@x", "a..b@x", ".a@x", "a\x00@x", "a\n@x", "a b@x", "a\x7f@x", "a" * 255):
            self.assertFalse(isAcceptableLoginName(bad), bad)

    def test_producerInterface(self) -> None:
        from io import BytesIO

        from twisted.internet.interfaces import IPullProducer
        from zope.interface.verify import verifyObject

        f = BytesIO(b"x")
        verifyObject(IPullProducer, _wire.MessageProducer(StringTransport(), f, _wire.wholeMessage(f, 10), 10))

    def test_factory(self) -> None:
        factory = POP3Factory(hostname=HOSTNAME, authenticator=FakeAuthenticator({}), limits=Limits(), clock=Clock())
        self.assertIsInstance(factory, Factory)
        self.assertIsNone(factory.tlsOptions)
        self.assertFalse(factory.implicitTLS)
        self.assertFalse(factory.allowPlaintextAuth)
        self.assertIsInstance(factory.buildProtocol(None), POP3Server)


# --- real sockets -----------------------------------------------------------


class _TrackingServer(POP3Server):
    """Tells the test when the server side of a connection is closed."""

    def connectionLost(self, reason=None) -> None:
        super().connectionLost(reason)
        self.factory.lost.append(reason)
        waiting, self.factory.waiting = self.factory.waiting, []
        for d in waiting:
            d.callback(None)


class RealTLSMixin(POP3Mixin):
    """
    A server listening on 127.0.0.1 with a throwaway certificate; tests
    wait for its side of every connection to close.
    """

    allowPlaintextAuth = False

    def setUp(self) -> None:
        super().setUp()
        from twisted.internet import reactor

        self.reactor = reactor
        directory = self.mktemp()
        os.makedirs(directory)
        self.cert, self.key = makeCertificate(directory)
        self.tlsOptions = serverContextFactory(self.cert, self.key)
        self.deliver(FIRST)
        self.deliver(SECOND)

    def listen(self, implicitTLS: bool) -> int:
        factory = self.makeFactory(tlsOptions=None if implicitTLS else self.tlsOptions, implicitTLS=implicitTLS, clock=self.reactor)
        factory.protocol = _TrackingServer
        factory.lost = []
        factory.waiting = []
        self.serverFactory = factory
        wrapped = TLSMemoryBIOFactory(self.tlsOptions, False, factory) if implicitTLS else factory
        port = self.reactor.listenTCP(0, wrapped, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def closed(self) -> Deferred:
        """Fires when every server connection has closed."""
        if self.serverFactory.connections == 0:
            return succeed(None)
        d: Deferred = Deferred()
        self.serverFactory.waiting.append(d)
        return d.addCallback(lambda _: self.closed())

    def clientContext(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cert)

    def sizes(self) -> List[int]:
        return [m.size for m in self.snapshot()]


class RealTLSTests(RealTLSMixin, TestCase):
    """
    poplib against the server on 127.0.0.1, over STLS and implicit TLS.
    """

    def test_stls(self) -> None:
        port = self.listen(implicitTLS=False)
        total = sum(self.sizes())

        def client():
            pop = poplib.POP3("127.0.0.1", port, timeout=10)
            try:
                before = pop.capa()
                pop.stls(self.clientContext())
                after = pop.capa()
                pop.user(ALICE)
                pop.pass_(PASSWORD)
                stat = pop.stat()
                message = pop.retr(2)
                uidl = pop.uidl()
                pop.dele(1)
                return before, after, stat, message, uidl, pop.quit()
            finally:
                pop.close()

        def check(result):
            before, after, stat, message, uidl, bye = result
            self.assertIn("STLS", before)
            self.assertNotIn("USER", before)
            self.assertIn("USER", after)
            self.assertNotIn("STLS", after)
            self.assertEqual(stat, (2, total))
            self.assertEqual(message[1][-3:], [b"line 2", b".line 3 starts with a dot", b"line 4"])
            self.assertEqual(len(uidl[1]), 2)
            self.assertTrue(bye.startswith(b"+OK"))
            return self.closed()

        def after(_):
            self.assertEqual(len(self.snapshot()), 1)
            self.assertEqual(len(self.files("cur")), 1)
            self.assertEqual(self.authenticator.held, {})

        return deferToThread(client).addCallback(check).addCallback(after)

    def test_implicitTLS(self) -> None:
        port = self.listen(implicitTLS=True)

        def client():
            pop = poplib.POP3_SSL("127.0.0.1", port, context=self.clientContext(), timeout=10)
            try:
                welcome = pop.getwelcome()
                caps = pop.capa()
                pop.user(ALICE)
                pop.pass_(PASSWORD)
                listing = pop.list()
                top = pop.top(1, 0)
                return welcome, caps, listing, top, pop.quit()
            finally:
                pop.close()

        def check(result):
            welcome, caps, listing, top, bye = result
            self.assertEqual(welcome, b"+OK pop.example.test POP3 mailnet ready")
            self.assertIn("USER", caps)
            self.assertNotIn("STLS", caps)
            self.assertEqual(listing[1], [b"1 %d" % self.sizes()[0], b"2 %d" % self.sizes()[1]])
            self.assertEqual(top[1], [RP.encode(), b"Subject: one", b""])
            return self.closed()

        return deferToThread(client).addCallback(check)

    def test_largeMessageOverTLS(self) -> None:
        """
        A multi-megabyte message crosses a real TLS connection intact, with
        the transport's backpressure driving the producer.
        """
        body = b"Subject: big\r\n\r\n" + b"".join(b".%07d " % i + b"y" * 90 + b"\r\n" for i in range(30000))
        self.deliver(body)
        port = self.listen(implicitTLS=True)

        def client():
            pop = poplib.POP3_SSL("127.0.0.1", port, context=self.clientContext(), timeout=30)
            try:
                pop.user(ALICE)
                pop.pass_(PASSWORD)
                response, lines, octets = pop.retr(3)
                pop.quit()
                return response, lines, octets
            finally:
                pop.close()

        def check(result):
            response, lines, octets = result
            size = self.sizes()[2]
            self.assertGreater(size, 3000000)
            self.assertEqual(response, b"+OK %d octets" % size)
            self.assertEqual(b"\r\n".join(lines) + b"\r\n", (RP + "\r\n").encode() + body)
            return self.closed()

        return deferToThread(client).addCallback(check)
