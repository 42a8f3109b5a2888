# -*- test-case-name: tests.test_pop3_security -*-
"""
Security regressions for L{mailnet.pop3.server}, each naming the attack or
the RFC rule it pins.
"""

import base64
import random
import socket
import ssl
from typing import List

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailnet.config import Limits
from mailnet.pop3.server import MAX_AUTH_LINE, MAX_COMMAND_LINE, State
from tests.test_pop3_server import ALICE, FIRST, PASSWORD, POP3Mixin, RealTLSMixin


class SpyMixin(POP3Mixin):
    """
    Records every call to the authenticator.
    """

    def setUp(self) -> None:
        super().setUp()
        self.calls: List[tuple] = []
        real = self.authenticator.login

        def login(credentials, peer, interface):
            self.calls.append((credentials.username, peer))
            return real(credentials, peer, interface)

        self.authenticator.login = login


class STLSInjectionTests(SpyMixin, SynchronousTestCase):
    """
    RFC 2595 §4, CVE-2011-0411 (plaintext command injection): whatever
    arrives after STLS before the handshake is discarded, and the session
    starts afresh under TLS.
    """

    allowPlaintextAuth = False

    def test_pipelinedAfterSTLSDiscarded(self) -> None:
        protocol, transport = self.connect()
        reply = self.send(protocol, transport, b"STLS\r\nUSER " + ALICE.encode() + b"\r\nCAPA\r\n")
        self.assertEqual(reply, b"+OK Begin TLS negotiation\r\n")
        self.assertEqual(len(transport.tlsStarted), 1)
        self.assertEqual(self.lines(protocol, transport, b"PASS " + PASSWORD.encode() + b"\r\n"), ["-ERR Send USER first"])
        self.assertEqual(self.calls, [])

    def test_partialLineAfterSTLSDiscarded(self) -> None:
        """
        Half a command injected after STLS does not prefix the first line
        sent under TLS.
        """
        protocol, transport = self.connect()
        self.send(protocol, transport, b"STLS\r\nQU")
        self.assertEqual(self.lines(protocol, transport, b"IT\r\nNOOP\r\n"), ["-ERR Unknown command", "-ERR Not logged in"])
        self.assertFalse(transport.disconnecting)

    def test_stateBeforeSTLSForgotten(self) -> None:
        """
        A USER given before STLS (where allowed) does not carry over.
        """
        protocol, transport = self.connect(self.makeFactory(allowPlaintextAuth=True))
        self.send(protocol, transport, b"USER " + ALICE.encode() + b"\r\n")
        self.send(protocol, transport, b"STLS\r\n")
        self.assertEqual(self.lines(protocol, transport, b"PASS " + PASSWORD.encode() + b"\r\n"), ["-ERR Send USER first"])

    def test_stlsOnce(self) -> None:
        protocol, transport = self.connect()
        self.send(protocol, transport, b"STLS\r\n")
        self.assertEqual(self.lines(protocol, transport, b"STLS\r\n"), ["-ERR Already using TLS"])
        self.assertEqual(len(transport.tlsStarted), 1)

    def test_stlsNotOnImplicitTLS(self) -> None:
        protocol, transport = self.connect(self.makeFactory(tlsOptions=None, implicitTLS=True))
        self.assertEqual(self.lines(protocol, transport, b"STLS\r\n"), ["-ERR Already using TLS"])
        self.assertEqual(transport.tlsStarted, [])

    def test_stlsNotAfterLogin(self) -> None:
        """RFC 2595 §4: STLS only in the AUTHORIZATION state."""
        protocol, transport = self.loggedIn(self.makeFactory(allowPlaintextAuth=True))
        self.assertEqual(self.lines(protocol, transport, b"STLS\r\n"), ["-ERR Command not valid in this state"])
        self.assertEqual(transport.tlsStarted, [])


class RealSTLSInjectionTests(RealTLSMixin, TestCase):
    """
    The same attack over a real TLS handshake on 127.0.0.1: the injected
    USER must not be executed, so a PASS under TLS finds no user.
    """

    def test_injectedPlaintextDiscarded(self) -> None:
        port = self.listen(implicitTLS=False)

        def readLine(sock) -> bytes:
            line = b""
            while not line.endswith(b"\r\n"):
                byte = sock.recv(1)
                if not byte:
                    break
                line += byte
            return line

        def client():
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            try:
                greeting = readLine(sock)
                # One packet: STLS and a command an attacker slipped in.
                sock.sendall(b"STLS\r\nUSER " + ALICE.encode() + b"\r\n")
                begin = readLine(sock)
                tls = ssl.create_default_context(cafile=self.cert).wrap_socket(sock, server_hostname="localhost")
                tls.sendall(b"PASS " + PASSWORD.encode() + b"\r\n")
                afterPass = readLine(tls)
                tls.sendall(b"QUIT\r\n")
                bye = readLine(tls)
                tls.close()
                return greeting, begin, afterPass, bye
            finally:
                sock.close()

        def check(result):
            greeting, begin, afterPass, bye = result
            self.assertTrue(greeting.startswith(b"+OK "))
            self.assertEqual(begin, b"+OK Begin TLS negotiation\r\n")
            self.assertEqual(afterPass, b"-ERR Send USER first\r\n")
            self.assertTrue(bye.startswith(b"+OK "))
            self.assertEqual(self.authenticator.held, {})
            return self.closed()

        return deferToThread(client).addCallback(check)


class LoginNameTests(SpyMixin, SynchronousTestCase):
    """
    Path traversal through the login name: a name with C{/}, C{..}, NUL or
    control characters is refused before the authenticator sees it.
    """

    allowPlaintextAuth = True
    BAD = [
        b"../../../etc/passwd",
        b"alice@example.test/../bob@example.test",
        b"..@example.test",
        b"alice@..",
        b"alice@example.test\x00",
        b"\x00",
        b"alice\x01@example.test",
        b"alice\x1b[31m@example.test",
        b"alice\rx@example.test",
        b"a\\b@example.test",
        b"\xff\xfe",
        b"a@example.test extra",
    ]

    def test_user(self) -> None:
        protocol, transport = self.connect(self.makeFactory(limits=Limits(max_errors=1000)))
        for name in self.BAD:
            reply = self.lines(protocol, transport, b"USER " + name + b"\r\n")
            self.assertEqual(reply, ["-ERR [AUTH] Invalid user name"], name)
            self.assertEqual(self.lines(protocol, transport, b"PASS x\r\n"), ["-ERR Send USER first"], name)
        self.assertEqual(self.calls, [])

    def test_authPlain(self) -> None:
        protocol, transport = self.connect(self.makeFactory(limits=Limits(max_errors=1000)))
        for name in self.BAD:
            token = base64.b64encode(b"\0" + name + b"\0" + PASSWORD.encode())
            [reply] = self.lines(protocol, transport, b"AUTH PLAIN " + token + b"\r\n")
            self.assertTrue(reply.startswith("-ERR [AUTH] "), (name, reply))
        self.assertEqual(self.calls, [])

    def test_overlongName(self) -> None:
        name = b"a" * 240 + b"@example.test"
        protocol, transport = self.connect()
        self.assertEqual(self.lines(protocol, transport, b"USER " + name + b"\r\n"), ["-ERR line too long"])
        token = base64.b64encode(b"\0" + b"a" * 300 + b"@example.test\0pw")
        self.assertEqual(self.lines(protocol, transport, b"AUTH PLAIN " + token + b"\r\n"), ["-ERR [AUTH] Invalid user name"])
        self.assertEqual(self.calls, [])

    def test_overlongPassword(self) -> None:
        token = base64.b64encode(b"\0" + ALICE.encode() + b"\0" + b"p" * 5000)
        protocol, transport = self.connect()
        self.assertEqual(self.lines(protocol, transport, b"AUTH PLAIN " + token + b"\r\n"), ["-ERR [AUTH] Authentication failed"])
        self.assertEqual(self.calls, [])

    def test_proxyLoginRefused(self) -> None:
        """
        RFC 4616 §2: an authorization identity other than the user's own
        (logging in as bob with alice's password) is refused.
        """
        protocol, transport = self.connect()
        token = base64.b64encode(b"bob@example.test\0" + ALICE.encode() + b"\0" + PASSWORD.encode())
        self.assertEqual(self.lines(protocol, transport, b"AUTH PLAIN " + token + b"\r\n"), ["-ERR [AUTH] Authentication failed"])
        self.assertIs(protocol.state, State.AUTHORIZATION)

    def test_noAPOPTimestamp(self) -> None:
        """
        APOP is not offered: no timestamp in the greeting, no command.
        """
        protocol, transport = self.connect()
        self.assertNotIn(b"<", transport.value())
        self.assertEqual(self.lines(protocol, transport, b"APOP alice@example.test c4c9334bac560ecc979e58001b3e22fb\r\n"), ["-ERR Unknown command"])


class LineLengthTests(POP3Mixin, SynchronousTestCase):
    """
    RFC 2449 §4: commands are at most 255 octets.  An over-long line gets
    one -ERR and the rest of it is skipped, however it is split, and never
    runs as a command.
    """

    def test_longLineOnePacket(self) -> None:
        protocol, transport = self.connect()
        reply = self.lines(protocol, transport, b"NOOP " + b"x" * 300 + b"\r\nCAPA\r\n")
        self.assertEqual(reply[0], "-ERR line too long")
        self.assertEqual(reply[1], "+OK Capability list follows")

    def test_longLineInPieces(self) -> None:
        """
        The tail of an over-long line is not taken for a new command, even
        when it looks like one.
        """
        protocol, transport = self.connect()
        self.assertEqual(self.lines(protocol, transport, b"X" * 200), [])
        self.assertEqual(self.lines(protocol, transport, b"Y" * 200), ["-ERR line too long"])
        self.assertEqual(self.lines(protocol, transport, b"Z" * 5000), [])
        self.assertEqual(self.lines(protocol, transport, b" QUIT\r\nCAPA\r\n")[0], "+OK Capability list follows")
        self.assertFalse(transport.disconnecting)

    def test_limit(self) -> None:
        protocol, transport = self.connect()
        exact = b"NOOP " + b"a" * (MAX_COMMAND_LINE - 5)
        self.assertEqual(self.lines(protocol, transport, exact + b"\r\n"), ["-ERR Not logged in"])
        self.assertEqual(self.lines(protocol, transport, exact + b"a\r\n"), ["-ERR line too long"])

    def test_longUserOrPass(self) -> None:
        protocol, transport = self.connect()
        self.assertEqual(self.lines(protocol, transport, b"USER " + b"a" * 400 + b"@example.test\r\n"), ["-ERR line too long"])
        self.send(protocol, transport, b"USER " + ALICE.encode() + b"\r\n")
        self.assertEqual(self.lines(protocol, transport, b"PASS " + b"p" * 400 + b"\r\n"), ["-ERR line too long"])

    def test_longSASLResponseAllowed(self) -> None:
        """
        RFC 5034 §4: a SASL response may be longer than a command line.
        """
        self.authenticator.passwords[ALICE] = "p" * 900
        token = base64.b64encode(b"\0" + ALICE.encode() + b"\0" + b"p" * 900)
        self.assertGreater(len(token), MAX_COMMAND_LINE)
        protocol, transport = self.connect()
        self.assertEqual(self.lines(protocol, transport, b"AUTH PLAIN\r\n" + token + b"\r\n"), ["+ ", "+OK Logged in, 0 messages (0 octets)"])

    def test_longInitialResponseAllowed(self) -> None:
        self.authenticator.passwords[ALICE] = "p" * 900
        token = base64.b64encode(b"\0" + ALICE.encode() + b"\0" + b"p" * 900)
        protocol, transport = self.connect()
        self.assertEqual(self.lines(protocol, transport, b"AUTH PLAIN " + token + b"\r\n"), ["+OK Logged in, 0 messages (0 octets)"])

    def test_tooLongSASLResponse(self) -> None:
        protocol, transport = self.connect()
        reply = self.lines(protocol, transport, b"AUTH PLAIN\r\n" + b"A" * (MAX_AUTH_LINE + 10) + b"\r\nNOOP\r\n")
        self.assertEqual(reply, ["+ ", "-ERR line too long", "-ERR Not logged in"])

    def test_tooLongSASLResponseInPieces(self) -> None:
        protocol, transport = self.connect()
        self.send(protocol, transport, b"AUTH PLAIN\r\n")
        self.assertEqual(self.lines(protocol, transport, b"A" * MAX_AUTH_LINE), [])
        self.assertEqual(self.lines(protocol, transport, b"A" * 10), ["-ERR line too long"])
        # The exchange is over: the next line is a command again.
        self.assertEqual(self.lines(protocol, transport, b"A\r\nCAPA\r\n")[0], "+OK Capability list follows")

    def test_longLinesCountAsErrors(self) -> None:
        self.limits = Limits(max_errors=3)
        protocol, transport = self.connect(self.makeFactory())
        reply = self.lines(protocol, transport, (b"x" * 1000 + b"\r\n") * 5)
        self.assertEqual(reply, ["-ERR line too long", "-ERR line too long", "-ERR too many errors"])
        self.assertTrue(transport.disconnecting)


class BinaryInputTests(POP3Mixin, SynchronousTestCase):
    """
    NUL, non-UTF-8 and random bytes get -ERR, never a traceback.
    """

    def test_nulAndBinary(self) -> None:
        protocol, transport = self.connect(self.makeFactory(limits=Limits(max_errors=1000)))
        for line, expected in [
            (b"\x00", "-ERR Unknown command"),
            (b"NOOP\x00", "-ERR Unknown command"),
            (b"\xff\xfe\xfd", "-ERR Unknown command"),
            (b"US\x00ER x", "-ERR Unknown command"),
            (b"USER \xc3\x28@example.test", "-ERR [AUTH] Invalid user name"),
            (b"AUTH \xff\xfe", "-ERR Unsupported authentication mechanism"),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "-ERR Unknown command"),
        ]:
            self.assertEqual(self.send(protocol, transport, line + b"\r\n"), expected.encode() + b"\r\n", line)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_binaryInTransaction(self) -> None:
        self.deliver(FIRST)
        protocol, transport = self.loggedIn(self.makeFactory(limits=Limits(max_errors=1000)))
        for line in (b"RETR \xff", b"TOP 1 \x00", b"DELE \xd9\xa1", b"LIST \x00", b"UIDL 1\x00"):
            [reply] = self.lines(protocol, transport, line + b"\r\n")
            self.assertTrue(reply.startswith("-ERR "), (line, reply))
        self.assertEqual(self.lines(protocol, transport, b"STAT\r\n")[0][:5], "+OK 1")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_fuzz(self) -> None:
        """
        Random bytes in random pieces: every reply is +OK, -ERR, a
        continuation or part of a multi-line response; nothing is logged as
        an error.
        """
        rng = random.Random(1939)
        for _ in range(20):
            protocol, transport = self.connect(self.makeFactory(limits=Limits(max_errors=10**6)))
            for _ in range(50):
                verb = rng.choice([b"USER", b"PASS", b"AUTH PLAIN", b"CAPA", b"", b"STAT", b"\x00", b"AUTH"])
                noise = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
                protocol.dataReceived(verb + b" " + noise + rng.choice([b"\r\n", b"\n", b""]))
                self.pump(transport)
            self.assertFalse(transport.disconnected)
            protocol.connectionLost(None)
        self.assertEqual(self.flushLoggedErrors(), [])


class ResourceTests(POP3Mixin, SynchronousTestCase):
    """
    Pipelined input is bounded while a command is pending.
    """

    def test_floodWhileBusy(self) -> None:
        pending: Deferred = Deferred()
        real = self.authenticator.login
        self.authenticator.login = lambda c, p, i: pending.addCallback(lambda _: self.successResultOf(real(c, p, i)))
        protocol, transport = self.connect()
        self.send(protocol, transport, b"USER " + ALICE.encode() + b"\r\nPASS " + PASSWORD.encode() + b"\r\n")
        protocol.dataReceived(b"NOOP\r\n" * 20000)
        self.assertEqual(transport.producerState, "paused")
        transport.clear()
        pending.callback(None)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(transport.value().count(b"+OK\r\n"), 20000)


class LoggingTests(POP3Mixin, SynchronousTestCase):
    """
    Logins are logged with the peer; passwords never.
    """

    def test_noPasswordsInLogs(self) -> None:
        events: List[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        protocol, transport = self.connect()
        self.send(protocol, transport, b"USER " + ALICE.encode() + b"\r\nPASS wrong-secret-1\r\n")
        token = base64.b64encode(b"\0" + ALICE.encode() + b"\0wrong-secret-2")
        self.send(protocol, transport, b"AUTH PLAIN " + token + b"\r\n")
        self.send(protocol, transport, b"AUTH PLAIN\r\n" + base64.b64encode(b"\0" + ALICE.encode() + b"\0" + PASSWORD.encode()) + b"\r\n")
        self.assertIs(protocol.state, State.TRANSACTION)
        text = "\n".join(formatEvent(e) + repr(sorted(e.items(), key=lambda kv: kv[0])) for e in events)
        self.assertIn("192.168.1.1", text)
        self.assertIn(ALICE, text)
        for secret in ("wrong-secret-1", "wrong-secret-2", PASSWORD, token.decode()):
            self.assertNotIn(secret, text)
