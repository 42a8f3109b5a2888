"""
Tests for L{mailnet.dkim}: the signing key store and the signer.
"""

import hashlib
import os

import dkim
import dkim.crypto
from twisted.trial.unittest import SynchronousTestCase

from mailnet import dkim as mdkim
from mailnet.dkim import KeyStore, headersToSign, sign
from tests.test_verdicts import testKey


class SignerTests(SynchronousTestCase):
    def test_openSSLSignatureIsDkimpys(self) -> None:
        """RSASSA-PKCS1-v1_5 is deterministic: OpenSSL's signature is the one dkimpy's own code makes."""
        key = testKey("a.test", "rsa")
        private = dkim.crypto.parse_pem_private_key(key.dkimpyKey())
        for name in ("sha256", "sha1"):
            digest = hashlib.new(name, b"message")
            self.assertEqual(mdkim._rsaSign(digest, private), dkim.crypto.RSASSA_PKCS1_v1_5_sign(digest, private))

    def test_headersToSign(self) -> None:
        """Present fields as often as they occur; From, To and Subject once more; others not at all."""
        message = b"Received: x\r\nFrom: a@a.test\r\nTo: b@b.test\r\nTo: c@c.test\r\nX-Other: 1\r\n\tfolded\r\n\r\nFrom: body\r\n"
        self.assertEqual(headersToSign(message), [b"from", b"to", b"to", b"from", b"to", b"subject"])

    def test_keyFileChangeSeen(self) -> None:
        """The loaded key is remembered only while the file stays the same."""
        store = KeyStore(self.mktemp())
        first = store.generate("a.test", "s1", "ed25519")
        before = first.dkimpyKey()
        os.remove(first.path)
        second = store.generate("a.test", "s1", "ed25519")
        os.utime(second.path, ns=(1, 1))
        self.assertNotEqual(second.dkimpyKey(), before)

    def test_preferredSelector(self) -> None:
        """Per type the key of the configured selector, else the newest; RSA first."""
        store = KeyStore(self.mktemp(), defaultSelector="b")
        a = store.generate("a.test", "a", "ed25519")
        os.utime(a.path, (1, 1))
        store.generate("a.test", "c", "ed25519")
        self.assertEqual([k.selector for k in store.signingKeys("a.test")], ["c"])
        store.generate("a.test", "b", "ed25519")
        self.assertEqual([k.selector for k in store.signingKeys("a.test")], ["b"])
        self.assertEqual(store.signingKeys("other.test"), [])

    def test_signedVerifies(self) -> None:
        key = testKey("a.test", "rsa")
        message = b"From: a@a.test\r\nSubject: s\r\n\r\nbody\r\n"
        signed = sign(message, [key]) + message
        self.assertTrue(dkim.verify(signed, dnsfunc=lambda name, timeout=5: key.record().encode()))
