"""
A real DNS server for tests: twisted.names serving a zone the test writes,
on 127.0.0.1 (UDP, and TCP on the same port when it is free), on the real
reactor.
"""

from typing import Any, Dict, List, Sequence, Union

from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.names import authority, dns, server

Record = Any


def txt(value: Union[str, Sequence[str]]) -> Record:
    """A TXT record; a long value is split into 255-octet strings (RFC 7208 §3.3)."""
    if isinstance(value, str):
        value = [value[i : i + 255] for i in range(0, len(value), 255)] or [""]
    return dns.Record_TXT(*[v.encode("ascii") for v in value], ttl=60)


def a(address: str) -> Record:
    return dns.Record_A(address, ttl=60)


def mx(preference: int, host: str) -> Record:
    return dns.Record_MX(preference, host.encode("ascii"), ttl=60)


class ZoneAuthority(authority.FileAuthority):
    """An authority for C{origin} whose records the test sets: name -> records."""

    def __init__(self, origin: str, records: Dict[str, List[Record]]) -> None:
        self._origin = origin
        self._initial = records
        authority.FileAuthority.__init__(self, origin)

    def loadFile(self, origin: str) -> None:  # type: ignore[override]
        soa = dns.Record_SOA(
            mname=b"ns." + origin.encode(), rname=b"hostmaster." + origin.encode(), serial=1,
            refresh=60, retry=60, expire=60, minimum=60, ttl=60,
        )
        self.soa = (origin.encode(), soa)
        self.records = {origin.encode(): [soa]}
        for name, records in self._initial.items():
            self.add(name, *records)

    def add(self, name: str, *records: Record) -> None:
        self.records.setdefault(name.lower().rstrip(".").encode("ascii"), []).extend(records)


class ZoneServer:
    """
    Serves C{zone} for the test's lifetime.

    @ivar address: C{(host, port)} to give as C{[dns] resolvers}.
    @ivar queries: how many queries came in.
    """

    def __init__(self, testCase: Any, records: Dict[str, List[Record]], origin: str = "test") -> None:
        self.authority = ZoneAuthority(origin, records)
        factory = server.DNSServerFactory(authorities=[self.authority])
        protocol = dns.DNSDatagramProtocol(factory)
        udp = reactor.listenUDP(0, protocol, interface="127.0.0.1")
        testCase.addCleanup(udp.stopListening)
        port = udp.getHost().port
        try:
            tcp = reactor.listenTCP(port, factory, interface="127.0.0.1")
        except CannotListenError:
            pass
        else:
            testCase.addCleanup(tcp.stopListening)
        self.address = ("127.0.0.1", port)

    def add(self, name: str, *records: Record) -> None:
        self.authority.add(name, *records)
