# -*- test-case-name: tests.test_autoconfig -*-
"""
The autoconfiguration documents and DNS records, from a configuration
(the HTTP side is in tests/test_web.py).
"""

from xml.etree import ElementTree as ET

from twisted.trial.unittest import SynchronousTestCase

from mailnet import autoconfig
from mailnet.config import loadConfig


def config(**overrides):
    settings = {"server.hostname": "mail.example.com", "server.domain": ("example.com",)}
    settings.update(overrides)
    return loadConfig(None, settings)


class ServersTests(SynchronousTestCase):
    def test_fromListeners(self) -> None:
        """Ports come from the first endpoint of each listener; listeners turned off are left out."""
        c = config(**{"listen.imaps": ("tcp:993", "tcp6:993"), "listen.pop3": (), "listen.submission": ("tcp:port=587:interface=::",)})
        self.assertEqual(
            [(s.protocol, s.port, s.implicitTLS) for s in autoconfig.servers(c)],
            [("imap", 993, True), ("imap", 2143, False), ("pop3", 2995, True), ("smtp", 587, False), ("smtp", 2465, True)],
        )

    def test_boundPortsWin(self) -> None:
        c = config(**{"listen.imaps": ("tcp:0",)})
        self.assertEqual(autoconfig.servers(c, {"imaps": 4993})[0].port, 4993)

    def test_thunderbirdEscapes(self) -> None:
        """The document is well-formed XML whatever the names."""
        body = autoconfig.thunderbird("mail.example.com", "ex<&>.com", autoconfig.servers(config()))
        self.assertEqual(ET.fromstring(body).find("emailProvider/domain").text, "ex<&>.com")


class AutodiscoverRequestTests(SynchronousTestCase):
    def test_address(self) -> None:
        body = b"<Autodiscover xmlns='x'><Request><EMailAddress> a@example.com </EMailAddress></Request></Autodiscover>"
        self.assertEqual(autoconfig.autodiscoverAddress(body), "a@example.com")

    def test_refused(self) -> None:
        for body in (b"<!DOCTYPE x><x/>", b"<x>", b"<x/>", b"<E><EMailAddress>no</EMailAddress></E>", b"<x>" * 10000):
            self.assertRaises(autoconfig.BadRequest, autoconfig.autodiscoverAddress, body)


class DNSRecordsTests(SynchronousTestCase):
    def test_records(self) -> None:
        """
        RFC 6186 SRV records for the services offered ("." for POP3S when
        it is off), the autoconfig names, and the MTA-STS TXT record whose
        id follows the policy.
        """
        c = config(**{"listen.submission": ("tcp:587",), "listen.imaps": ("tcp:993",), "listen.pop3s": ()})
        rows = autoconfig.dnsRecords(c, "example.com")
        self.assertIn(("_submission._tcp.example.com.", "SRV", "0 1 587 mail.example.com."), rows)
        self.assertIn(("_imaps._tcp.example.com.", "SRV", "0 1 993 mail.example.com."), rows)
        self.assertIn(("_pop3s._tcp.example.com.", "SRV", "0 0 0 ."), rows)
        self.assertIn(("autoconfig.example.com.", "CNAME", "mail.example.com."), rows)
        sts = [v for n, t, v in rows if n == "_mta-sts.example.com."][0]
        self.assertEqual(sts, '"v=STSv1; id=%s"' % (autoconfig.mtaSTSId(c),))
        other = autoconfig.mtaSTSId(config(**{"tls.cert": "/c.pem", "tls.key": "/k.pem"}))
        self.assertNotEqual(other, autoconfig.mtaSTSId(c))

    def test_policy(self) -> None:
        self.assertEqual(
            autoconfig.mtaSTSPolicy(config(**{"tls.cert": "/c.pem", "tls.key": "/k.pem"})),
            b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmax_age: 604800\r\n",
        )
