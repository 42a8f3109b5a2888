"""
Tests for L{mailnet.dns}: look-ups against a real DNS server on 127.0.0.1,
from the reactor and from a worker thread.
"""

from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.names import dns
from twisted.names import error as dnserror
from twisted.trial import unittest

from mailnet.config import loadConfig
from mailnet.dns import NEGATIVE_TTL, DNSClient, DNSFailure, makeResolver, systemServers
from tests.dnszone import ZoneServer, a, mx, txt


class LookupTests(unittest.TestCase):
    def setUp(self) -> None:
        self.zone = ZoneServer(
            self,
            {
                "example.test": [txt("v=spf1 -all"), a("192.0.2.1"), mx(10, "mx.example.test")],
                "long.example.test": [txt("x" * 600)],
            },
        )
        self.client = DNSClient(reactor, [self.zone.address])

    @defer.inlineCallbacks
    def test_recordsFromTheConfiguredServer(self) -> Any:
        """TXT, A and MX records come from the [dns] resolvers server, in pyspf's shapes."""
        found = yield self.client.query("example.test", "TXT")
        self.assertEqual(found, [(("example.test", "TXT"), [b"v=spf1 -all"])])
        found = yield self.client.query("example.test", "A")
        self.assertEqual(found, [(("example.test", "A"), "192.0.2.1")])
        found = yield self.client.query("example.test", "MX")
        self.assertEqual(found, [(("example.test", "MX"), (10, "mx.example.test"))])

    @defer.inlineCallbacks
    def test_noSuchNameIsEmpty(self) -> Any:
        """NXDOMAIN and no record of the type are both an empty answer, not an error."""
        self.assertEqual((yield self.client.query("nowhere.example.test", "TXT")), [])
        self.assertEqual((yield self.client.query("long.example.test", "A")), [])

    @defer.inlineCallbacks
    def test_blockingFromAThread(self) -> Any:
        """A worker thread gets answers through the reactor's resolver; long TXT strings are joined."""
        blocking = self.client.blocking()
        found = yield deferToThread(blocking.txt, "long.example.test")
        self.assertEqual(found, [b"x" * 600])
        self.assertEqual(blocking.lookups, 1)

    @defer.inlineCallbacks
    def test_mxForTheRelay(self) -> Any:
        """The relay's MX look-up goes to the same server."""
        answers, _, _ = yield self.client.lookupMailExchange("example.test")
        self.assertEqual([r.payload.name.name for r in answers], [b"mx.example.test"])


class CountingResolver:
    """A resolver that answers one TXT record and counts the questions."""

    def __init__(self, ttl: int = 60, fail: bool = False, nxdomain: bool = False) -> None:
        self.ttl, self.fail, self.nxdomain, self.asked = ttl, fail, nxdomain, 0

    def query(self, q: Any) -> defer.Deferred:
        self.asked += 1
        if self.fail:
            return defer.fail(dnserror.DNSServerError("SERVFAIL"))
        if self.nxdomain:
            return defer.fail(dnserror.DNSNameError("NXDOMAIN"))
        record = dns.RRHeader(name=q.name.name, type=dns.TXT, ttl=self.ttl, payload=dns.Record_TXT(b"v=spf1 -all", ttl=self.ttl))
        return defer.succeed(([record], [], []))


class FailureTests(unittest.SynchronousTestCase):
    def test_serverFailureIsDNSFailure(self) -> None:
        """SERVFAIL and time-outs are L{DNSFailure} (temperror), not an empty answer."""

        class Failing:
            def query(self, q: Any) -> defer.Deferred:
                return defer.fail(dnserror.DNSServerError("SERVFAIL"))

        client = DNSClient(reactor, resolver=Failing())
        self.failureResultOf(client.query("example.test", "TXT"), DNSFailure)

    def test_serverFailureIsNotRemembered(self) -> None:
        """After a failure, the next look-up asks again."""
        resolver = CountingResolver(fail=True)
        client = DNSClient(task.Clock(), resolver=resolver)
        self.failureResultOf(client.query("example.test", "TXT"), DNSFailure)
        resolver.fail = False
        self.assertEqual(len(self.successResultOf(client.query("example.test", "TXT"))), 1)
        self.assertEqual(resolver.asked, 2)

    def test_answersRememberedForTheirTTL(self) -> None:
        """The same question within the records' TTL is answered without asking; after it, asked again."""
        clock = task.Clock()
        resolver = CountingResolver(ttl=300)
        client = DNSClient(clock, resolver=resolver)
        first = self.successResultOf(client.query("Example.test.", "TXT"))
        clock.advance(299)
        self.assertEqual(self.successResultOf(client.query("example.test", "TXT")), first)
        self.assertEqual(resolver.asked, 1)
        clock.advance(2)
        self.successResultOf(client.query("example.test", "TXT"))
        self.assertEqual(resolver.asked, 2)

    def test_noSuchNameRememberedBriefly(self) -> None:
        """NXDOMAIN is remembered for NEGATIVE_TTL seconds; a zero TTL is never remembered."""
        clock = task.Clock()
        resolver = CountingResolver(nxdomain=True)
        client = DNSClient(clock, resolver=resolver)
        self.assertEqual(self.successResultOf(client.query("nowhere.test", "TXT")), [])
        self.assertEqual(self.successResultOf(client.query("nowhere.test", "TXT")), [])
        self.assertEqual(resolver.asked, 1)
        clock.advance(NEGATIVE_TTL + 1)
        self.successResultOf(client.query("nowhere.test", "TXT"))
        self.assertEqual(resolver.asked, 2)
        zero = CountingResolver(ttl=0)
        client = DNSClient(clock, resolver=zero)
        self.successResultOf(client.query("example.test", "TXT"))
        self.successResultOf(client.query("example.test", "TXT"))
        self.assertEqual(zero.asked, 2)

    def test_systemServers(self) -> None:
        """Without [dns] resolvers, the nameserver lines of resolv.conf; 127.0.0.1 if none."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("search example.test\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\n")
        self.assertEqual(systemServers(path), [("192.0.2.53", 53), ("fe80::1", 53)])
        self.assertEqual(systemServers(self.mktemp()), [("127.0.0.1", 53)])

    def test_configuredServers(self) -> None:
        """[dns] resolvers: host:port, comma-separated, port 53 by default."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[dns]\nresolvers = 127.0.0.1:5353, 192.0.2.53, [2001:db8::53]:54\n")
        config = loadConfig(path)
        self.assertEqual(config.dns_resolvers, (("127.0.0.1", 5353), ("192.0.2.53", 53), ("2001:db8::53", 54)))
        resolver = makeResolver(reactor, config.dns_resolvers)
        self.assertEqual(resolver.servers, list(config.dns_resolvers))


class SettingsTests(unittest.SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_authAndDKIM(self) -> None:
        """[auth] trusted_networks, reject_spf_fail and [dkim] selector; empty by default."""
        import ipaddress

        config = loadConfig(self.write("[auth]\ntrusted_networks = 192.0.2.0/24, 2001:db8::1\nreject_spf_fail = yes\n[dkim]\nselector = Mail2026\n"))
        self.assertEqual(config.trusted_networks, (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::1/128")))
        self.assertTrue(config.reject_spf_fail)
        self.assertEqual(config.dkim_selector, "mail2026")
        defaults = loadConfig(None)
        self.assertEqual((defaults.trusted_networks, defaults.reject_spf_fail, defaults.dkim_selector, defaults.dns_resolvers), ((), False, "s1", ()))

    def test_badValuesNamed(self) -> None:
        """A bad network, selector or resolver stops start-up with the file, line and key."""
        from mailnet.errors import ConfigError

        for text, line in [
            ("[auth]\ntrusted_networks = 10.0.0.0/33\n", 2),
            ("[dkim]\n\nselector = a_b/c\n", 3),
            ("[dns]\nresolvers = 127.0.0.1:99999\n", 2),
        ]:
            path = self.write(text)
            error = self.assertRaises(ConfigError, loadConfig, path)
            self.assertIn("%s:%d" % (path, line), str(error))
