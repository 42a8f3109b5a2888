# -*- test-case-name: tests.test_tls -*-
"""
Tests for L{mailnet.tls}.
"""

import os

from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from mailnet.errors import ConfigError
from mailnet.testing import makeCertificate
from mailnet.tls import (
    ReloadableContextFactory,
    certificateNames,
    ensureCertificate,
    fingerprint,
    serverContextFactory,
)


class CertificateTests(SynchronousTestCase):
    def test_generatedOnceAndReused(self) -> None:
        dataDir = self.mktemp()
        os.makedirs(dataDir)
        cert, key, generated = ensureCertificate(dataDir, "mx.example.test", None, None)
        self.assertTrue(generated)
        self.assertEqual(os.stat(key).st_mode & 0o777, 0o600)
        names, expiry = certificateNames(cert)
        self.assertIn("mx.example.test", names)
        again = ensureCertificate(dataDir, "mx.example.test", None, None)
        self.assertEqual(again, (cert, key, False))
        self.assertEqual(fingerprint(cert), fingerprint(again[0]))

    def test_configuredPairWins(self) -> None:
        self.assertEqual(ensureCertificate("/nonexistent", "h", "c.pem", "k.pem"), ("c.pem", "k.pem", False))

    def test_fingerprintFormat(self) -> None:
        cert, _ = makeCertificate()
        fp = fingerprint(cert)
        self.assertRegex(fp, r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$")

    def handshake(self, maxVersion: int) -> str:
        """Run a TLS handshake in memory with a client capped at C{maxVersion}."""
        cert, key = makeCertificate()
        server = SSL.Connection(serverContextFactory(cert, key).getContext(), None)
        server.set_accept_state()
        clientContext = SSL.Context(SSL.TLS_METHOD)
        clientContext.set_max_proto_version(maxVersion)
        clientContext.set_min_proto_version(SSL.TLS1_VERSION)
        clientContext.set_cipher_list(b"ALL:@SECLEVEL=0")
        client = SSL.Connection(clientContext, None)
        client.set_connect_state()
        for _ in range(10):
            for a, b in ((client, server), (server, client)):
                try:
                    a.do_handshake()
                except SSL.WantReadError:
                    pass
                try:
                    b.bio_write(a.bio_read(65536))
                except SSL.WantReadError:
                    pass
        return server.get_protocol_version_name()

    def test_tls12Accepted(self) -> None:
        self.assertEqual(self.handshake(SSL.TLS1_2_VERSION), "TLSv1.2")

    def test_olderThanTLS12Refused(self) -> None:
        """RFC 8996 and RFC 9325: TLS 1.0 and 1.1 are not offered."""
        self.assertRaises(SSL.Error, self.handshake, SSL.TLS1_1_VERSION)

    def test_chainAccepted(self) -> None:
        cert, key = makeCertificate()
        other, _ = makeCertificate()
        chained = self.mktemp()
        with open(chained, "wb") as f, open(cert, "rb") as a, open(other, "rb") as b:
            f.write(a.read() + b.read())
        serverContextFactory(chained, key)

    def test_mismatchedKey(self) -> None:
        cert, _ = makeCertificate()
        _, otherKey = makeCertificate()
        error = self.assertRaises(ConfigError, serverContextFactory, cert, otherKey)
        self.assertIn("does not match", str(error))

    def test_missingAndGarbage(self) -> None:
        cert, key = makeCertificate()
        self.assertRaises(ConfigError, serverContextFactory, "/nonexistent.pem", key)
        garbage = self.mktemp()
        with open(garbage, "wb") as f:
            f.write(b"not a certificate")
        self.assertRaises(ConfigError, serverContextFactory, garbage, key)
        self.assertRaises(ConfigError, serverContextFactory, cert, garbage)

    def test_reload(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        cert, key = makeCertificate(directory)
        factory = ReloadableContextFactory(cert, key)
        first = factory.getContext()
        makeCertificate(directory)  # a renewal writes new files in place
        factory.reload()
        self.assertIsNot(factory.getContext(), first)

    def test_badReloadKeepsOld(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        cert, key = makeCertificate(directory)
        factory = ReloadableContextFactory(cert, key)
        first = factory.getContext()
        with open(cert, "wb") as f:
            f.write(b"truncated")
        self.assertRaises(ConfigError, factory.reload)
        self.assertIs(factory.getContext(), first)
