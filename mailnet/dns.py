# -*- test-case-name: tests.test_dns -*-
"""
Every DNS look-up mailnet makes (MX for relaying; SPF, DKIM, DMARC and PTR
for the verdicts on incoming mail) goes through one L{DNSClient}: a
L{twisted.names} resolver asking the servers of C{[dns] resolvers}, or the
system's (C{/etc/resolv.conf}) when that is empty.

The libraries that judge mail (dkimpy, pyspf) are blocking and run in a
worker thread; L{DNSClient.blocking} gives them look-up functions that ask
the reactor's resolver from that thread and wait for the answer
(L{twisted.internet.threads.blockingCallFromThread}), never a resolver of
their own.
"""

import socket
from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import blockingCallFromThread
from twisted.names import client, dns
from twisted.names import error as dnserror

RESOLV_CONF = "/etc/resolv.conf"

#: twisted.names retries a query after each of these many seconds.
QUERY_TIMEOUTS = (1, 3)
#: A look-up that has no answer after this many seconds is a DNS failure.
LOOKUP_TIMEOUT = 8.0

#: Answers are remembered for their records' TTL, at most this long; "no
#: such name or record" for NEGATIVE_TTL.  Failures are never remembered.
MAX_CACHE_TTL = 3600
NEGATIVE_TTL = 60
#: Remembered answers; the table is emptied when it is full.
CACHE_ENTRIES = 10000

#: Record types by the names pyspf and the verdict code use.
TYPES = {
    "A": dns.A,
    "AAAA": dns.AAAA,
    "MX": dns.MX,
    "PTR": dns.PTR,
    "TXT": dns.TXT,
    "SPF": dns.SPF,
    "CNAME": dns.CNAME,
}
_NAMES = {number: name for name, number in TYPES.items()}


class DNSFailure(Exception):
    """
    A look-up had no usable answer: a time-out, a server failure, a
    refusal.  (No such name and no such record are answers: empty lists.)
    """


def systemServers(path: str = RESOLV_CONF) -> List[Tuple[str, int]]:
    """The C{nameserver} lines of C{resolv.conf} (127.0.0.1 if there are none, as the C library does)."""
    servers = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    servers.append((words[1].split("%")[0], 53))
    except OSError:
        pass
    return servers or [("127.0.0.1", 53)]


def makeResolver(reactor: Any, servers: Sequence[Tuple[str, int]] = ()) -> Any:
    """
    A L{twisted.names.client.Resolver} on C{reactor}: asking C{servers}
    when given, else the servers in C{/etc/resolv.conf} (read once, now:
    Twisted's own re-reading would keep a timer running for ever).

    (Not L{twisted.names.client.createResolver}: that one caches and uses
    the global reactor.)
    """
    return client.Resolver(servers=list(servers or systemServers()), reactor=reactor, timeout=QUERY_TIMEOUTS)


def _value(record: dns.RRHeader) -> Any:
    """A record's data in the form pyspf's own DNS drivers give it."""
    payload: Any = record.payload
    if record.type == dns.A:
        return payload.dottedQuad()
    if record.type == dns.AAAA:
        return socket.inet_ntop(socket.AF_INET6, payload.address)
    if record.type == dns.MX:
        return (payload.preference, payload.name.name.decode("ascii", "replace"))
    if record.type in (dns.PTR, dns.CNAME):
        return payload.name.name.decode("ascii", "replace")
    if record.type in (dns.TXT, dns.SPF):
        return list(payload.data)
    return None


class DNSClient:
    """
    The one resolver of a running mailnet.

    @ivar resolver: the L{twisted.names} resolver (it also serves as the
        relay's MX resolver: L{lookupMailExchange}).
    """

    def __init__(self, reactor: Any, servers: Sequence[Tuple[str, int]] = (), resolver: Any = None) -> None:
        self._reactor = reactor
        self.servers = tuple(servers)
        self.resolver = resolver if resolver is not None else makeResolver(reactor, servers)
        # (name, kind) -> (expiry, answer): mail from one domain asks the
        # same SPF, DMARC and key records again and again.
        self._cache: Dict[Tuple[str, str], Tuple[float, List[Any]]] = {}

    def lookupMailExchange(self, name: str, timeout: Any = None) -> Deferred:
        """L{twisted.internet.interfaces.IResolver.lookupMailExchange}, for the relay."""
        return self.resolver.lookupMailExchange(name)

    def query(self, name: str, kind: str) -> Deferred:
        """
        Ask for C{kind} records (C{"TXT"}, C{"A"} ...) of C{name}.

        @return: a L{Deferred} firing with a list of C{((name, kind),
            value)} pairs (CNAME records included, as pyspf expects;
            empty for no such name or record), or failing with
            L{DNSFailure}.  An answer is remembered for its TTL (at most
            L{MAX_CACHE_TTL} seconds; an empty one for L{NEGATIVE_TTL}).
        """
        key = (name.rstrip(".").lower(), kind)
        now = self._reactor.seconds()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return succeed(list(cached[1]))
        d = self.resolver.query(dns.Query(name.rstrip("."), TYPES[kind], dns.IN))
        d.addTimeout(LOOKUP_TIMEOUT, self._reactor)

        def answered(result: Tuple[List[dns.RRHeader], Any, Any]) -> List[Tuple[Tuple[str, str], Any]]:
            answers = result[0]
            out = []
            for record in answers:
                typeName = _NAMES.get(record.type)
                if typeName is None:
                    continue
                out.append(((record.name.name.decode("ascii", "replace").rstrip("."), typeName), _value(record)))
            ttl = min((record.ttl for record in answers), default=NEGATIVE_TTL)
            self._remember(key, min(ttl, MAX_CACHE_TTL) if out else NEGATIVE_TTL, out)
            return out

        def failed(failure: Any) -> List[Any]:
            if failure.check(dnserror.DNSNameError, dnserror.AuthoritativeDomainError):
                self._remember(key, NEGATIVE_TTL, [])
                return []  # NXDOMAIN: no records
            # Time-outs, SERVFAIL, REFUSED, FORMERR, an unreachable server.
            raise DNSFailure("%s %s: %s" % (name[:255], kind, failure.type.__name__))

        return d.addCallbacks(answered, failed)

    def _remember(self, key: Tuple[str, str], ttl: float, answer: List[Any]) -> None:
        if ttl <= 0:
            return
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.clear()
        self._cache[key] = (self._reactor.seconds() + ttl, list(answer))

    def blocking(self) -> "BlockingDNS":
        """Look-up functions for a worker thread."""
        return BlockingDNS(self)


class BlockingDNS:
    """
    Look-ups for code running in a worker thread (never on the reactor
    thread: it would wait for itself).

    @ivar lookups: how many queries were made, for the limits of callers.
    """

    def __init__(self, client: DNSClient) -> None:
        self._client = client
        self.lookups = 0

    def records(self, name: str, kind: str) -> List[Tuple[Tuple[str, str], Any]]:
        """
        @see: L{DNSClient.query}

        @raise DNSFailure: no usable answer.
        """
        self.lookups += 1
        reactor = self._client._reactor
        if not getattr(reactor, "running", True):
            # Shutting down: nothing would answer.
            raise DNSFailure("%s %s: the reactor is not running" % (name[:255], kind))
        return blockingCallFromThread(reactor, self._client.query, name, kind)

    def txt(self, name: str) -> List[bytes]:
        """
        The TXT records of C{name}, each one's strings joined (RFC 7208
        §3.3, RFC 6376 §3.6.2.2).
        """
        # Records of a CNAME's target count too (the owner differs).
        return [b"".join(value) for (_, kind), value in self.records(name, "TXT") if kind == "TXT"]

    def dkimTXT(self, name: bytes, timeout: Optional[float] = None) -> Optional[bytes]:
        """
        dkimpy's C{dnsfunc}: the key record at C{name}, or L{None}.  A
        DNS failure raises L{DNSFailure}, which the verifier reports as
        C{temperror}.
        """
        records = self.txt(name.decode("ascii", "replace"))
        for record in records:
            if record.lstrip().startswith(b"v=DKIM1"):
                return record
        return records[0] if records else None
