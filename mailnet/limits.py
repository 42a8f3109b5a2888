# -*- test-case-name: tests.test_limits -*-
"""
Connection accounting shared by every listener.

One L{ConnectionLimiter} holds the server's whole connection budget
(C{[limits] max_connections}) and each client's share of it
(C{max_connections_per_client}, clients keyed as the login throttle keys
them: an IPv4 address, or an IPv6 address's /64).  L{LimitingFactory} wraps
a listener's factory and asks the limiter before building a protocol, so
every listener -- whatever its protocol -- draws from the same budget.

A refused connection is answered with the wrapped factory's
C{refusalLine(perClient)} if it has one (C{421 4.7.0} for SMTP, C{-ERR
[SYS/TEMP]} for POP3) and closed at once; otherwise (implicit-TLS
listeners, where nothing can be said before the handshake) it is just
closed.  A refused connection never reaches the protocol, TLS or the
thread pool.

L{fitDescriptorLimit} makes the budget fit the process's open-file limit
(C{RLIMIT_NOFILE}) at start.
"""

from typing import Any, Callable, Dict, Optional, Tuple

from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from mailnet import metrics
from mailnet.cred import peerKey

log = Logger()

#: Descriptors one client connection may hold at once: its socket, and the
#: file of a large message on its way to a Maildir or the queue.
DESCRIPTORS_PER_CONNECTION = 2

#: Descriptors kept for everything else: listening sockets, the account
#: store, logs, the relay queue, standard streams.
RESERVED_DESCRIPTORS = 100


class ConnectionLimiter:
    """
    The connection budget of the whole server and of each client.

    @ivar maxConnections: connections open at once, over every listener.
    @ivar maxPerClient: connections open at once from one client (see
        L{mailnet.cred.peerKey}).
    @ivar open: connections open now.
    @ivar watcher: called with L{open} whenever it changes, or L{None}
        (the load table of L{mailnet.workers}).
    """

    watcher: Optional[Callable[[int], None]] = None

    def __init__(self, maxConnections: int, maxPerClient: int) -> None:
        self.maxConnections = maxConnections
        self.maxPerClient = maxPerClient
        self.open = 0
        self._clients: Dict[str, int] = {}
        # Refusals since the client (or the server) was last below its
        # limit: the first is logged, the rest only counted (no log flood).
        self._refused: Dict[str, int] = {}
        self._fullRefusals = 0

    def full(self) -> bool:
        """@return: whether the server-wide budget is used up."""
        return self.open >= self.maxConnections

    def connectionsFrom(self, peerHost: Optional[str]) -> int:
        """@return: the open connections of C{peerHost}'s client."""
        return self._clients.get(peerKey(peerHost), 0) if peerHost else 0

    def admit(self, peerHost: Optional[str]) -> bool:
        """
        Count a new connection, if the budgets allow it.

        @param peerHost: the client's IP address; L{None} for peers without
            one (UNIX sockets), which count against the server-wide budget
            only.
        @return: C{True} if admitted: call L{release} when it closes.
        """
        key = peerKey(peerHost) if peerHost else None
        if self.full():
            self._fullRefusals += 1
            if self._fullRefusals == 1:
                log.warn(
                    "connection from {client} refused: all {n} connections are in use",
                    client=key or "?",
                    n=self.maxConnections,
                )
            return False
        if key is not None:
            count = self._clients.get(key, 0)
            if count >= self.maxPerClient:
                refused = self._refused[key] = self._refused.get(key, 0) + 1
                if refused == 1:
                    log.warn("connection from {client} refused: it has {n} connections open", client=key, n=count)
                return False
            self._clients[key] = count + 1
        self.open += 1
        if self.watcher is not None:
            self.watcher(self.open)
        return True

    def release(self, peerHost: Optional[str]) -> None:
        """Forget a connection that L{admit} counted."""
        self.open -= 1
        if self.watcher is not None:
            self.watcher(self.open)
        if self._fullRefusals and not self.full():
            log.info("{n} connection(s) refused in all while the server was full", n=self._fullRefusals)
            self._fullRefusals = 0
        if not peerHost:
            return
        key = peerKey(peerHost)
        count = self._clients.get(key, 0) - 1
        if count > 0:
            self._clients[key] = count
        else:
            self._clients.pop(key, None)
        if key in self._refused and count < self.maxPerClient:
            refused = self._refused.pop(key)
            if refused > 1:
                log.info("{client}: {n} connections refused in all while it was at its limit", client=key, n=refused)


class _Refused(Protocol):
    """Says C{line} (if any) and closes."""

    transport: Any

    def __init__(self, line: Optional[bytes]) -> None:
        self.line = line

    def connectionMade(self) -> None:
        if self.line:
            self.transport.write(self.line)
        self.transport.loseConnection()


def _logPrefix(thing) -> str:
    prefix = getattr(thing, "logPrefix", None)
    return prefix() if prefix is not None else thing.__class__.__name__


class _Counted(ProtocolWrapper):
    """A wrapped connection that gives its place back when it closes."""

    peerHost: Optional[str] = None

    def logPrefix(self) -> str:
        # Logs name the protocol, as without the wrapper.
        return _logPrefix(self.wrappedProtocol)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        factory, wrapped = self.factory, self.wrappedProtocol
        try:
            ProtocolWrapper.connectionLost(self, reason)
        finally:
            factory.limiter.release(self.peerHost)
            metrics.connectionClosed(factory.role, wrapped, self)


class LimitingFactory(WrappingFactory[_Counted]):
    """
    Wraps a listener's factory: a connection is built only if the shared
    L{ConnectionLimiter} admits it.

    The wrapped factory may offer C{refusalLine(perClient: bool) -> bytes}:
    the line sent (then the connection is closed) when a connection is
    refused because its client (C{perClient}) or the whole server is at
    its limit.  Without it, refused connections are closed silently.

    @ivar limiter: the shared budget.
    """

    protocol = _Counted
    noisy = False
    #: The listener's role, for metrics.
    role = "other"

    def __init__(self, limiter: ConnectionLimiter, wrappedFactory) -> None:
        super().__init__(wrappedFactory)
        self.limiter = limiter
        refusalLine: Optional[Callable[[bool], bytes]] = getattr(wrappedFactory, "refusalLine", None)
        self._refusalLine = refusalLine

    def logPrefix(self) -> str:
        return _logPrefix(self.wrappedFactory)

    def buildProtocol(self, addr):
        host = getattr(addr, "host", None)
        if not self.limiter.admit(host):
            perClient = not self.limiter.full()
            metrics.connectionRefused(self.role, perClient)
            line = self._refusalLine(perClient) if self._refusalLine is not None else None
            return _Refused(line)
        try:
            wrapped = self.wrappedFactory.buildProtocol(addr)
        except BaseException:
            self.limiter.release(host)
            raise
        if wrapped is None:
            self.limiter.release(host)
            return None
        protocol = self.protocol(self, wrapped)
        protocol.peerHost = host
        metrics.connectionAdmitted(self.role)
        return protocol

    # The wrapper needs no table of its protocols: the limiter counts them.
    def registerProtocol(self, p) -> None:
        pass

    def unregisterProtocol(self, p) -> None:
        pass


def fitDescriptorLimit(
    limiter: ConnectionLimiter,
    otherDescriptors: int = 0,
    getrlimit: Optional[Callable[[int], Tuple[int, int]]] = None,
    setrlimit: Optional[Callable[[int, Tuple[int, int]], None]] = None,
) -> int:
    """
    Make the connection budget fit the open-file limit (C{RLIMIT_NOFILE}):
    raise the soft limit toward the hard one as far as the budget needs,
    and if even the hard limit is too low, lower the budget (with a
    warning) rather than run out of descriptors under a flood and drop
    honest connections at random.

    @param otherDescriptors: descriptors needed beyond the client
        connections and L{RESERVED_DESCRIPTORS} (outgoing relay
        connections, for example).
    @param getrlimit: C{resource.getrlimit}, for tests.
    @param setrlimit: C{resource.setrlimit}, for tests.
    @return: the budget in force (C{limiter.maxConnections}).
    """
    try:
        import resource
    except ImportError:  # not on POSIX: nothing to adjust
        return limiter.maxConnections
    getrlimit = getrlimit or resource.getrlimit
    setrlimit = setrlimit or resource.setrlimit
    reserve = RESERVED_DESCRIPTORS + otherDescriptors
    needed = limiter.maxConnections * DESCRIPTORS_PER_CONNECTION + reserve
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if wanted > soft:
            try:
                setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            except (ValueError, OSError) as e:
                log.warn("cannot raise the open-file limit from {soft} to {wanted}: {error}", soft=soft, wanted=wanted, error=e)
            else:
                log.info("open-file limit raised from {soft} to {wanted}", soft=soft, wanted=wanted)
                soft = wanted
    if soft != resource.RLIM_INFINITY and soft < needed:
        budget = max(1, (soft - reserve) // DESCRIPTORS_PER_CONNECTION)
        log.warn(
            "the open-file limit ({soft}) is too low for max_connections = {wanted}: at most {budget} connections "
            "will be served; raise it (LimitNOFILE= in the systemd unit, ulimit -n) to {needed}",
            soft=soft,
            wanted=limiter.maxConnections,
            budget=budget,
            needed=needed,
        )
        limiter.maxConnections = budget
        limiter.maxPerClient = min(limiter.maxPerClient, budget)
    return limiter.maxConnections
