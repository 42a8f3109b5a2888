# -*- test-case-name: tests.test_passwords -*-
"""
Tests for L{mailnet.passwords}.
"""

from argon2 import PasswordHasher
from twisted.trial.unittest import SynchronousTestCase

from mailnet import passwords
from mailnet.passwords import (
    DEFAULT_HASHER,
    DUMMY_HASH,
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
