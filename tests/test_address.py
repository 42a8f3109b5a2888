# -*- test-case-name: tests.test_address -*-
"""
Tests for L{mailnet.address}.
"""

from twisted.trial.unittest import SynchronousTestCase

from mailnet.address import isDomain, isSafeMailboxName, normalizeAddress, normalizeDomain
from mailnet.errors import BadAddress


class AddressTests(SynchronousTestCase):
    def test_normalizes(self) -> None:
        self.assertEqual(normalizeAddress("Alice.Smith+tag@Example.TEST"), "alice.smith+tag@example.test")

    def test_refused(self) -> None:
        for bad in [
            "alice",
            "@example.test",
            "alice@",
            "a b@example.test",
            "alice@exa_mple.test",
            "alice@-x.test",
            ".alice@example.test",
            "al..ice@example.test",
            '"quoted"@example.test',
            "alice@example.test\r\nBcc: x@y.test",
            "a\0b@example.test",
            "x" * 65 + "@example.test",
            "a@" + ("x" * 63 + ".") * 4 + "test",
        ]:
            self.assertRaises(BadAddress, normalizeAddress, bad)

    def test_utf8OnlyWhenAllowed(self) -> None:
        self.assertRaises(BadAddress, normalizeAddress, "jörg@bücher.test")
        self.assertEqual(normalizeAddress("Jörg@Bücher.test", allowUTF8=True), "jörg@bücher.test")

    def test_reasonInMessage(self) -> None:
        error = self.assertRaises(BadAddress, normalizeAddress, "alice")
        self.assertIn("no @domain", str(error))

    def test_domains(self) -> None:
        self.assertTrue(isDomain("mail.example.test"))
        self.assertFalse(isDomain("example.test."))
        self.assertFalse(isDomain(""))
        self.assertEqual(normalizeDomain("Example.TEST"), "example.test")
        self.assertRaises(BadAddress, normalizeDomain, "exa mple")

    def test_safeMailboxNames(self) -> None:
        self.assertTrue(isSafeMailboxName("alice@example.test"))
        for bad in ["../x@example.test", "a/b@example.test", "a@..", "a\\b@example.test", ".x@example.test", "a@b\x01.test"]:
            self.assertFalse(isSafeMailboxName(bad), bad)


class AddressCacheTests(SynchronousTestCase):
    """Valid addresses are remembered (MAIL and RCPT ask for the same ones); the answers are the same."""

    def test_repeatedAnswers(self) -> None:
        for _ in range(3):
            self.assertEqual(normalizeAddress("Alice@Example.TEST"), "alice@example.test")
            self.assertRaises(BadAddress, normalizeAddress, "bad address@example.test")
            self.assertRaises(BadAddress, normalizeAddress, "j\u00f6rg@example.test")
            self.assertEqual(normalizeAddress("j\u00f6rg@example.test", allowUTF8=True), "j\u00f6rg@example.test")
            self.assertFalse(isSafeMailboxName("../x@example.test"))
            self.assertTrue(isSafeMailboxName("alice@example.test"))

    def test_bounded(self) -> None:
        """Many different addresses, or long login names, do not grow memory without end."""
        from mailnet import address

        for i in range(address.ADDRESS_CACHE_SIZE + 10):
            normalizeAddress("user%d@example.test" % (i,))
            isSafeMailboxName("user%d@example.test" % (i,))
        self.assertLessEqual(address._normalizeAddress.cache_info().currsize, address.ADDRESS_CACHE_SIZE)
        self.assertLessEqual(address._cachedIsSafeMailboxName.cache_info().currsize, address.ADDRESS_CACHE_SIZE)
        before = address._cachedIsSafeMailboxName.cache_info().misses
        self.assertFalse(isSafeMailboxName("x" * 5000 + "/@example.test"))
        self.assertEqual(address._cachedIsSafeMailboxName.cache_info().misses, before)
