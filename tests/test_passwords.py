# -*- test-case-name: tests.test_passwords -*-
"""
Tests for L{mailnet.passwords}.
"""

from argon2 import PasswordHasher
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailnet import passwords
from mailnet.passwords import (
    DEFAULT_HASHER,
    DUMMY_HASH,
    LOGIN_CACHE_SIZE,
    LOGIN_CACHE_TTL,
    LoginCache,
    dummyHash,
    hashPassword,
    lowCostHasher,
    needsRehash,
    verifyPassword,
)

CHEAP = lowCostHasher()


class HashPasswordTests(SynchronousTestCase):
    def test_argon2id(self) -> None:
        """
        Hashes are Argon2id PHC strings with the hasher's parameters.
        """
        hashed = hashPassword("secret", CHEAP)
        self.assertTrue(hashed.startswith("$argon2id$v=19$m=8,t=1,p=1$"), hashed)

    def test_defaultParameters(self) -> None:
        """
        Without a hasher the argon2-cffi defaults (RFC 9106 low-memory
        profile: m=64 MiB, t=3, p=4) are used.
        """
        self.assertEqual((DEFAULT_HASHER.memory_cost, DEFAULT_HASHER.time_cost, DEFAULT_HASHER.parallelism), (65536, 3, 4))
        self.patch(passwords, "DEFAULT_HASHER", CHEAP)
        self.assertIn("$m=8,t=1,p=1$", hashPassword("secret"))

    def test_salted(self) -> None:
        """
        Two hashes of one password differ (random salt) and both verify.
        """
        a, b = hashPassword("secret", CHEAP), hashPassword("secret", CHEAP)
        self.assertNotEqual(a, b)
        self.assertTrue(verifyPassword(a, "secret"))
        self.assertTrue(verifyPassword(b, "secret"))


class VerifyPasswordTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.hash = hashPassword("correct horse", CHEAP)

    def test_match(self) -> None:
        self.assertIs(verifyPassword(self.hash, "correct horse"), True)

    def test_bytes(self) -> None:
        """
        Passwords as received on the wire (UTF-8 bytes) verify like text.
        """
        self.assertIs(verifyPassword(self.hash, b"correct horse"), True)
        hashed = hashPassword("p\u00e4ss", CHEAP)
        self.assertIs(verifyPassword(hashed, "p\u00e4ss".encode("utf-8")), True)

    def test_nonUTF8Bytes(self) -> None:
        """
        Bytes that are not UTF-8 are hashed as they are.
        """
        hashed = hashPassword(b"\xff\xfe", CHEAP)
        self.assertIs(verifyPassword(hashed, b"\xff\xfe"), True)
        self.assertIs(verifyPassword(hashed, b"\xff"), False)

    def test_mismatch(self) -> None:
        self.assertIs(verifyPassword(self.hash, "correct horsE"), False)
        self.assertIs(verifyPassword(self.hash, ""), False)

    def test_normalisation(self) -> None:
        """
        RFC 8265 OpaqueString: composed and decomposed forms of one password
        match.
        """
        hashed = hashPassword("caf\u00e9", CHEAP)
        self.assertIs(verifyPassword(hashed, "cafe\u0301"), True)

    def test_malformedHash(self) -> None:
        """
        Bad input gives C{False}, never an exception.
        """
        for bad in ["", "nonsense", "$argon2id$v=19$m=8,t=1,p=1$AAAA", "$2b$12$abcdefghijklmnopqrstuv", None, 42]:
            self.assertIs(verifyPassword(bad, "x"), False, bad)  # type: ignore[arg-type]
        self.assertIs(verifyPassword(self.hash, None), False)  # type: ignore[arg-type]
        self.assertIs(verifyPassword(self.hash, 42), False)  # type: ignore[arg-type]


class NeedsRehashTests(SynchronousTestCase):
    def test_sameParameters(self) -> None:
        self.assertFalse(needsRehash(hashPassword("x", CHEAP), CHEAP))

    def test_otherParameters(self) -> None:
        """
        A hash made with cheaper parameters than the default needs a rehash.
        """
        self.assertTrue(needsRehash(hashPassword("x", CHEAP)))
        self.assertTrue(needsRehash(hashPassword("x", CHEAP), PasswordHasher(time_cost=2, memory_cost=8, parallelism=1)))

    def test_malformed(self) -> None:
        self.assertTrue(needsRehash("nonsense"))


class DummyHashTests(SynchronousTestCase):
    def test_defaultDummy(self) -> None:
        """
        The module-level dummy hash has the default parameters, so verifying
        against it costs what a real verification costs, and no password
        matches it.
        """
        self.assertFalse(needsRehash(DUMMY_HASH))
        self.assertEqual(dummyHash(), DUMMY_HASH)
        self.assertFalse(verifyPassword(DUMMY_HASH, ""))

    def test_otherParameters(self) -> None:
        """
        For other parameters a dummy hash with those parameters is made once.
        """
        dummy = dummyHash(CHEAP)
        self.assertFalse(needsRehash(dummy, CHEAP))
        self.assertEqual(dummyHash(lowCostHasher()), dummy)
        self.assertNotEqual(dummy, DUMMY_HASH)

    def test_followsPatchedDefault(self) -> None:
        self.patch(passwords, "DEFAULT_HASHER", CHEAP)
        self.assertFalse(needsRehash(dummyHash(), CHEAP))


class LoginCacheTests(SynchronousTestCase):
    """
    Issue 14, "Logins": successful verifications remembered for a while.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.cache = LoginCache(self.clock, ttl=600, size=100)
        self.stored = hashPassword("secret", CHEAP)

    def test_defaults(self) -> None:
        """Ten minutes, ten thousand entries."""
        self.assertEqual((LOGIN_CACHE_TTL, LOGIN_CACHE_SIZE), (600.0, 10000))
        cache = LoginCache(self.clock)
        self.assertEqual((cache.ttl, cache.size), (LOGIN_CACHE_TTL, LOGIN_CACHE_SIZE))

    def test_hitAfterAdd(self) -> None:
        self.assertFalse(self.cache.hit("a@example.test", self.stored, "secret"))
        self.cache.add("a@example.test", self.stored, "secret")
        self.assertTrue(self.cache.hit("a@example.test", self.stored, "secret"))
        self.assertEqual(len(self.cache), 1)

    def test_sameAsVerification(self) -> None:
        """
        A password hits in the forms that would verify: UTF-8 bytes as
        received, and the other Unicode composition (RFC 8265).
        """
        self.cache.add("a@example.test", self.stored, "caf\u00e9")
        self.assertTrue(self.cache.hit("a@example.test", self.stored, "cafe\u0301"))
        self.assertTrue(self.cache.hit("a@example.test", self.stored, "caf\u00e9".encode("utf-8")))
        self.cache.add("a@example.test", self.stored, b"\xff\xfe")
        self.assertTrue(self.cache.hit("a@example.test", self.stored, b"\xff\xfe"))
        self.assertFalse(self.cache.hit("a@example.test", self.stored, b"\xff"))

    def test_everyPartCounts(self) -> None:
        """
        Another password, another stored hash (a password change) or
        another user misses.
        """
        self.cache.add("a@example.test", self.stored, "secret")
        self.assertFalse(self.cache.hit("a@example.test", self.stored, "secreT"))
        self.assertFalse(self.cache.hit("a@example.test", self.stored, ""))
        self.assertFalse(self.cache.hit("a@example.test", hashPassword("secret", CHEAP), "secret"))
        self.assertFalse(self.cache.hit("b@example.test", self.stored, "secret"))

    def test_fieldsDoNotRunTogether(self) -> None:
        """
        The parts are length-prefixed: moving characters from one to the
        next makes another key.
        """
        self.cache.add("a@example.test", "$hash", "secret")
        self.assertFalse(self.cache.hit("a@example.test$", "hash", "secret"))
        self.assertFalse(self.cache.hit("a@example.test", "$hashs", "ecret"))

    def test_expires(self) -> None:
        """
        An entry lives C{ttl} seconds from the verification that added it:
        hits do not renew it.
        """
        self.cache.add("a@example.test", self.stored, "secret")
        self.clock.advance(599)
        self.assertTrue(self.cache.hit("a@example.test", self.stored, "secret"))
        self.clock.advance(1)
        self.assertFalse(self.cache.hit("a@example.test", self.stored, "secret"))
        self.assertEqual(len(self.cache), 0)

    def test_expiredDropped(self) -> None:
        """Adding drops the entries that expired, without being asked for."""
        self.cache.add("a@example.test", self.stored, "secret")
        self.clock.advance(300)
        self.cache.add("b@example.test", self.stored, "secret")
        self.clock.advance(300)
        self.cache.add("c@example.test", self.stored, "secret")
        self.assertEqual(len(self.cache), 2)

    def test_clockBack(self) -> None:
        """
        If the clock goes back, an entry that would live longer than C{ttl}
        from now is not trusted.
        """
        self.clock.advance(10000)
        self.cache.add("a@example.test", self.stored, "secret")
        self.clock.rightNow -= 3600
        self.assertFalse(self.cache.hit("a@example.test", self.stored, "secret"))

    def test_bounded(self) -> None:
        """At most C{size} entries: the oldest go first."""
        cache = LoginCache(self.clock, ttl=600, size=3)
        for n in range(5):
            cache.add("u%d@example.test" % (n,), self.stored, "secret")
            self.clock.advance(1)
        self.assertEqual(len(cache), 3)
        self.assertEqual([cache.hit("u%d@example.test" % (n,), self.stored, "secret") for n in range(5)], [False, False, True, True, True])

    def test_off(self) -> None:
        """A TTL or a size of 0 remembers nothing."""
        for cache in [LoginCache(self.clock, ttl=0), LoginCache(self.clock, size=0)]:
            self.assertFalse(cache.enabled)
            cache.add("a@example.test", self.stored, "secret")
            self.assertEqual(len(cache), 0)
            self.assertFalse(cache.hit("a@example.test", self.stored, "secret"))

    def test_perProcessKey(self) -> None:
        """
        Each cache has its own random 32-byte key; entries are HMACs, which
        do not contain the password.
        """
        other = LoginCache(self.clock)
        self.assertEqual(len(self.cache._key), 32)
        self.assertNotEqual(self.cache._key, other._key)
        self.assertNotEqual(self.cache._digest("a@example.test", self.stored, "secret"), other._digest("a@example.test", self.stored, "secret"))
        self.cache.add("a@example.test", self.stored, "secret")
        [entry] = self.cache._entries
        self.assertEqual(len(entry), 32)
        self.assertNotIn(b"secret", entry)

    def test_unverifiablePasswords(self) -> None:
        """
        Passwords that could never verify (not text or bytes, or text that
        is not Unicode) are never remembered.
        """
        for password in ["\ud800", None, 42]:
            self.cache.add("a@example.test", self.stored, password)  # type: ignore[arg-type]
            self.assertFalse(self.cache.hit("a@example.test", self.stored, password))  # type: ignore[arg-type]
        self.assertEqual(len(self.cache), 0)

    def test_clear(self) -> None:
        self.cache.add("a@example.test", self.stored, "secret")
        self.cache.clear()
        self.assertFalse(self.cache.hit("a@example.test", self.stored, "secret"))
