# -*- test-case-name: tests.test_limits -*-
"""
Tests for L{mailnet.limits}: one connection budget over every listener and
a share of it per client (issue 11 item 4: one address could hold all of
C{max_connections}, per listener, and exhaust the descriptors).
"""

import resource

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailnet.config import Limits
from mailnet.limits import (
    DESCRIPTORS_PER_CONNECTION,
    RESERVED_DESCRIPTORS,
    ConnectionLimiter,
    LimitingFactory,
    fitDescriptorLimit,
)
from mailnet.pop3.server import POP3Factory
from mailnet.smtp.server import SMTPFactory
from mailnet.testing import FakeAuthenticator, FakeDeliveryAgent, makeCertificate
from mailnet.tls import ReloadableContextFactory
from tests.support import startServer


def address(host: str, port: int = 40000):
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


class ConnectionLimiterTests(SynchronousTestCase):
    def test_perClient(self) -> None:
        limiter = ConnectionLimiter(maxConnections=100, maxPerClient=2)
        self.assertTrue(limiter.admit("192.0.2.1"))
        self.assertTrue(limiter.admit("192.0.2.1"))
        self.assertFalse(limiter.admit("192.0.2.1"))
        self.assertTrue(limiter.admit("192.0.2.2"), "another client is served")
        self.assertEqual(limiter.open, 3)
        limiter.release("192.0.2.1")
        self.assertTrue(limiter.admit("192.0.2.1"), "a place given back can be taken again")
        self.assertEqual(limiter.connectionsFrom("192.0.2.1"), 2)

    def test_overall(self) -> None:
        limiter = ConnectionLimiter(maxConnections=3, maxPerClient=2)
        for host in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
            self.assertTrue(limiter.admit(host))
        self.assertTrue(limiter.full())
        self.assertFalse(limiter.admit("192.0.2.4"))
        limiter.release("192.0.2.2")
        self.assertTrue(limiter.admit("192.0.2.4"))

    def test_ipv6ByNetwork(self) -> None:
        """An IPv6 subscriber usually has a /64: it is one client."""
        limiter = ConnectionLimiter(maxConnections=100, maxPerClient=2)
        self.assertTrue(limiter.admit("2001:db8:1:2::1"))
        self.assertTrue(limiter.admit("2001:db8:1:2::ffff"))
        self.assertFalse(limiter.admit("2001:db8:1:2:abcd::1"))
        self.assertTrue(limiter.admit("2001:db8:1:3::1"))
        self.assertFalse(limiter.admit("::ffff:192.0.2.9") and limiter.admit("192.0.2.9") and limiter.admit("192.0.2.9"))

    def test_peerWithoutAddress(self) -> None:
        """UNIX-socket peers count against the whole server's budget only."""
        limiter = ConnectionLimiter(maxConnections=3, maxPerClient=1)
        self.assertTrue(limiter.admit(None))
        self.assertTrue(limiter.admit(None))
        limiter.release(None)
        self.assertEqual(limiter.open, 1)

    def test_forgetsClients(self) -> None:
        """The table holds only clients with connections open."""
        limiter = ConnectionLimiter(maxConnections=100, maxPerClient=1)
        for i in range(50):
            host = "192.0.2.%d" % (i,)
            limiter.admit(host)
            limiter.admit(host)  # refused
            limiter.release(host)
        self.assertEqual(limiter._clients, {})
        self.assertEqual(limiter._refused, {})
        self.assertEqual(limiter.open, 0)


def smtpFactory(**limits) -> SMTPFactory:
    return SMTPFactory(
        hostname="mx.example.test",
        role="mta",
        delivery=FakeDeliveryAgent(),
        authenticator=FakeAuthenticator({}),
        limits=Limits(**limits),
        clock=Clock(),
    )


def pop3Factory(**limits) -> POP3Factory:
    return POP3Factory(hostname="pop.example.test", authenticator=FakeAuthenticator({}), limits=Limits(**limits), clock=Clock())


class LimitingFactoryTests(SynchronousTestCase):
    def connect(self, factory, host: str, port: int = 40000):
        peer = address(host, port)
        protocol = factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_oneClientCannotTakeEverything(self) -> None:
        """
        Issue 11 item 4: past max_connections_per_client, one address gets
        C{421 4.7.0} and is closed; another address is still served.
        """
        limiter = ConnectionLimiter(maxConnections=1000, maxPerClient=50)
        factory = LimitingFactory(limiter, smtpFactory())
        held = [self.connect(factory, "127.0.0.1", 1000 + i) for i in range(50)]
        for _, transport in held:
            self.assertTrue(transport.value().startswith(b"220 "))
        _, refused = self.connect(factory, "127.0.0.1", 2000)
        self.assertEqual(refused.value(), b"421 4.7.0 mx.example.test Too many connections from your address\r\n")
        self.assertTrue(refused.disconnecting)
        _, other = self.connect(factory, "127.0.0.2")
        self.assertEqual(other.value(), b"220 mx.example.test ESMTP mailnet\r\n")
        self.assertFalse(other.disconnecting)
        self.assertEqual(limiter.open, 51)
        # A closed connection gives its place back.
        protocol, _ = held[0]
        protocol.connectionLost(None)
        self.assertEqual(limiter.open, 50)
        _, again = self.connect(factory, "127.0.0.1", 2001)
        self.assertTrue(again.value().startswith(b"220 "))
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_oneBudgetForAllListeners(self) -> None:
        """
        max_connections is one budget across listeners, not one per
        listener (5 x 1,000 descriptors were more than a default process
        may open).
        """
        limiter = ConnectionLimiter(maxConnections=4, maxPerClient=50)
        smtp = LimitingFactory(limiter, smtpFactory())
        submission = LimitingFactory(limiter, smtpFactory())
        pop3 = LimitingFactory(limiter, pop3Factory())
        self.connect(smtp, "192.0.2.1")
        self.connect(submission, "192.0.2.2")
        self.connect(pop3, "192.0.2.3")
        self.connect(pop3, "192.0.2.4")
        _, refusedPOP3 = self.connect(pop3, "192.0.2.5")
        self.assertEqual(refusedPOP3.value(), b"-ERR [SYS/TEMP] Too many connections, try again later\r\n")
        _, refusedSMTP = self.connect(smtp, "192.0.2.5")
        self.assertEqual(refusedSMTP.value(), b"421 4.7.0 mx.example.test too many connections, try again later\r\n")
        self.assertTrue(refusedSMTP.disconnecting)

    def test_pop3PerClient(self) -> None:
        limiter = ConnectionLimiter(maxConnections=10, maxPerClient=1)
        factory = LimitingFactory(limiter, pop3Factory())
        _, first = self.connect(factory, "192.0.2.1")
        self.assertTrue(first.value().startswith(b"+OK "))
        _, second = self.connect(factory, "192.0.2.1")
        self.assertEqual(second.value(), b"-ERR [SYS/TEMP] too many connections from your address\r\n")
        self.assertTrue(second.disconnecting)

    def test_implicitTLSRefusedWithoutHandshake(self) -> None:
        """
        On an implicit-TLS port nothing can be said before the handshake:
        a refused connection is closed at once, and costs no handshake.
        """
        limiter = ConnectionLimiter(maxConnections=10, maxPerClient=1)
        built = []

        class Inner(Factory):
            def buildProtocol(self, addr):
                built.append(addr)
                return pop3Factory().buildProtocol(addr)

        cert, key = makeCertificate()
        factory = LimitingFactory(limiter, TLSMemoryBIOFactory(ReloadableContextFactory(cert, key), False, Inner()))
        factory.buildProtocol(address("192.0.2.1"))
        protocol = factory.buildProtocol(address("192.0.2.1"))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(built), 1, "only the admitted connection reached the protocol")

    def test_otherProtocolsClosedSilently(self) -> None:
        """A factory without C{refusalLine} (a future listener) is still limited."""
        limiter = ConnectionLimiter(maxConnections=1, maxPerClient=1)
        factory = LimitingFactory(limiter, Factory.forProtocol(Protocol))
        _, first = self.connect(factory, "192.0.2.1")
        self.assertFalse(first.disconnecting)
        _, second = self.connect(factory, "192.0.2.2")
        self.assertEqual(second.value(), b"")
        self.assertTrue(second.disconnecting)

    def test_logsNameTheProtocol(self) -> None:
        """The wrapper does not show in log prefixes ("SMTPFactory starting on 25")."""
        factory = LimitingFactory(ConnectionLimiter(10, 10), smtpFactory())
        self.assertEqual(factory.logPrefix(), "SMTPFactory")
        protocol, _ = self.connect(factory, "192.0.2.1")
        self.assertEqual(protocol.logPrefix(), "SMTPServer")

    def test_unixPeers(self) -> None:
        limiter = ConnectionLimiter(maxConnections=2, maxPerClient=1)
        factory = LimitingFactory(limiter, Factory.forProtocol(Protocol))
        for _ in range(2):
            protocol = factory.buildProtocol(UNIXAddress(None))
            protocol.makeConnection(StringTransport())
        self.assertEqual(limiter.open, 2)
        protocol.connectionLost(None)
        self.assertEqual(limiter.open, 1)

    def test_wrappedFactoryDeclines(self) -> None:
        """A wrapped factory that builds nothing does not keep a place."""

        class Declining(Factory):
            def buildProtocol(self, addr):
                return None

        limiter = ConnectionLimiter(maxConnections=2, maxPerClient=1)
        factory = LimitingFactory(limiter, Declining())
        self.assertIsNone(factory.buildProtocol(address("192.0.2.1")))
        self.assertEqual(limiter.open, 0)

    def test_refusalsLoggedOnce(self) -> None:
        """A flood of refused connections is one log line, not one each."""
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        limiter = ConnectionLimiter(maxConnections=100, maxPerClient=1)
        limiter.admit("192.0.2.1")
        for _ in range(300):
            limiter.admit("192.0.2.1")
        refusals = [e for e in events if "refused" in e.get("log_format", "")]
        self.assertEqual(len(refusals), 1)
        limiter.release("192.0.2.1")
        summaries = [e for e in events if e.get("n") == 300]
        self.assertEqual(len(summaries), 1)


class FileLimitTests(SynchronousTestCase):
    """At start, the budget is made to fit RLIMIT_NOFILE."""

    def fake(self, soft: int, hard: int, fails: bool = False):
        state = {"limits": (soft, hard), "set": []}

        def getrlimit(which):
            self.assertEqual(which, resource.RLIMIT_NOFILE)
            return state["limits"]

        def setrlimit(which, limits):
            if fails:
                raise ValueError("not allowed")
            state["set"].append(limits)
            state["limits"] = limits

        return state, getrlimit, setrlimit

    def test_softRaisedTowardHard(self) -> None:
        state, get, set = self.fake(1024, 65536)
        limiter = ConnectionLimiter(1000, 50)
        self.assertEqual(fitDescriptorLimit(limiter, 40, get, set), 1000)
        needed = 1000 * DESCRIPTORS_PER_CONNECTION + RESERVED_DESCRIPTORS + 40
        self.assertEqual(state["set"], [(needed, 65536)])

    def test_enoughAlready(self) -> None:
        state, get, set = self.fake(100000, 100000)
        self.assertEqual(fitDescriptorLimit(ConnectionLimiter(1000, 50), 0, get, set), 1000)
        self.assertEqual(state["set"], [])

    def test_budgetLoweredWithWarning(self) -> None:
        """A hard limit of 1,024 cannot serve 1,000 connections: fewer are promised."""
        state, get, set = self.fake(512, 1024)
        limiter = ConnectionLimiter(1000, 50)
        budget = fitDescriptorLimit(limiter, 0, get, set)
        self.assertEqual(state["set"], [(1024, 1024)])
        self.assertEqual(budget, (1024 - RESERVED_DESCRIPTORS) // DESCRIPTORS_PER_CONNECTION)
        self.assertEqual(limiter.maxConnections, budget)
        self.assertEqual(limiter.maxPerClient, 50)

    def test_cannotRaise(self) -> None:
        state, get, set = self.fake(256, 4096, fails=True)
        limiter = ConnectionLimiter(1000, 50)
        budget = fitDescriptorLimit(limiter, 0, get, set)
        self.assertEqual(budget, (256 - RESERVED_DESCRIPTORS) // DESCRIPTORS_PER_CONNECTION)
        self.assertEqual(limiter.maxPerClient, 50)
        limiter = ConnectionLimiter(1000, 100)
        fitDescriptorLimit(limiter, 0, get, set)
        self.assertEqual(limiter.maxPerClient, budget, "never more per client than in all")


class FirstLine(Protocol):
    def __init__(self) -> None:
        self.line: Deferred = Deferred()
        self.closed: Deferred = Deferred()
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if b"\r\n" in self._buffer and not self.line.called:
            self.line.callback(self._buffer.split(b"\r\n", 1)[0])

    def connectionLost(self, reason) -> None:
        if not self.line.called:
            self.line.callback(self._buffer)
        self.closed.callback(None)


class RealSocketTests(TestCase):
    """
    On a running server, over real sockets: one address that holds its
    share of connections does not stop another (127.0.0.2 is loopback too).
    """

    @inlineCallbacks
    def connect(self, port: int, bindHost: str):
        protocol = FirstLine()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(bindHost, 0))
        yield connectProtocol(endpoint, protocol)
        self.addCleanup(lambda: protocol.transport.loseConnection() or protocol.closed)
        line = yield protocol.line
        return line

    @inlineCallbacks
    def test_otherAddressServed(self) -> None:
        server = yield startServer(self, listeners=("smtp", "pop3"), limits={"max_connections_per_client": 5})
        self.assertEqual(server.service.limiter.maxPerClient, 5)
        smtp, pop3 = server.ports["smtp"], server.ports["pop3"]
        # The share is over all listeners together.
        for port in (smtp, smtp, smtp, pop3, pop3):
            line = yield self.connect(port, "127.0.0.1")
            self.assertIn(line[:3], (b"220", b"+OK"))
        line = yield self.connect(smtp, "127.0.0.1")
        self.assertEqual(line, b"421 4.7.0 localhost Too many connections from your address")
        line = yield self.connect(pop3, "127.0.0.1")
        self.assertEqual(line, b"-ERR [SYS/TEMP] too many connections from your address")
        line = yield self.connect(smtp, "127.0.0.2")
        self.assertEqual(line, b"220 localhost ESMTP mailnet")
        line = yield self.connect(pop3, "127.0.0.2")
        self.assertTrue(line.startswith(b"+OK "))
