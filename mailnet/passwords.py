# -*- test-case-name: tests.test_passwords -*-
"""
Password hashing with Argon2id (RFC 9106) through argon2-cffi.

Hashes are PHC strings (C{$argon2id$v=19$m=...,t=...,p=...$salt$hash}), so
each carries its own cost parameters: a hash made with cheaper parameters
(in tests, or before a parameter change) still verifies, and
L{needsRehash} tells when to replace it.

Hashing and verifying take tens of milliseconds and 64 MiB of memory on
purpose; servers call them off the reactor thread (see
L{mailnet.cred.AccountChecker}).

Passwords are normalised to Unicode NFC before hashing (RFC 8265 §4.2, the
OpaqueString profile), so the same password typed on two systems that
compose accents differently still matches.

L{LoginCache} remembers successful verifications for a few minutes, so
that a client that reconnects often does not pay Argon2 each time (see
"The login cache" in docs/security.rst for what that costs).
"""

import hashlib
import hmac
import os
import secrets
import unicodedata
from collections import OrderedDict
from typing import Dict, Optional, Tuple, Union

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = [
    "DEFAULT_HASHER",
    "DUMMY_HASH",
    "LOGIN_CACHE_SIZE",
    "LOGIN_CACHE_TTL",
    "LoginCache",
    "dummyHash",
    "hashPassword",
    "lowCostHasher",
    "needsRehash",
    "verifyPassword",
]

#: argon2-cffi's defaults: the RFC 9106 §4 "second recommended option"
#: (low memory): Argon2id, t=3, m=64 MiB, p=4.
DEFAULT_HASHER = PasswordHasher()

#: The hash of a random secret nobody knows, made with L{DEFAULT_HASHER}'s
#: parameters.  Verifying a password against it costs what verifying a real
#: user's password costs, so a login for an unknown user takes as long as a
#: login with a wrong password (no timing oracle for user existence).
DUMMY_HASH = "$argon2id$v=19$m=65536,t=3,p=4$08+ThciBFKivp5lwk85Fww$Awlk38Ke/W0xBtFcpwt0Idumpkf/za+RXwxgxcB3Lhw"

Password = Union[str, bytes]

_dummies: Dict[Tuple[int, int, int, int, int], str] = {}


def lowCostHasher() -> PasswordHasher:
    """
    A hasher with the smallest sensible cost: B{for tests only}, where
    hundreds of hashes must stay fast.
    """
    return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def _hasher(hasher: Optional[PasswordHasher]) -> PasswordHasher:
    # Looked up at call time so that tests may patch DEFAULT_HASHER.
    return hasher if hasher is not None else DEFAULT_HASHER


def _prepare(password: Password) -> Password:
    """NFC-normalise text; bytes that are not UTF-8 are used as they are."""
    if isinstance(password, bytes):
        try:
            password = password.decode("utf-8")
        except UnicodeDecodeError:
            return password
    return unicodedata.normalize("NFC", password)


def hashPassword(password: Password, hasher: Optional[PasswordHasher] = None) -> str:
    """
    Hash a password with a fresh random salt.

    @param password: the password (text, or UTF-8 bytes as received on the
        wire).
    @param hasher: the parameters to use; L{DEFAULT_HASHER} if not given.
    @return: the PHC string to store.
    """
    return _hasher(hasher).hash(_prepare(password))


def verifyPassword(hash: str, password: Password, hasher: Optional[PasswordHasher] = None) -> bool:
    """
    Check a password against a stored hash.

    @return: C{True} when they match; C{False} on a mismatch and on any bad
        input (a malformed or non-Argon2 hash, a password of the wrong
        type).  Never raises for bad input.
    """
    try:
        return _hasher(hasher).verify(hash, _prepare(password))
    except (VerificationError, InvalidHashError, TypeError, ValueError, AttributeError):
        return False


def needsRehash(hash: str, hasher: Optional[PasswordHasher] = None) -> bool:
    """
    @return: whether C{hash} was made with other parameters than C{hasher}'s
        (or is not a hash at all), so that it should be replaced by a new
        hash the next time the password is known.
    """
    try:
        return _hasher(hasher).check_needs_rehash(hash)
    except (InvalidHashError, TypeError, ValueError, AttributeError):
        return True


def dummyHash(hasher: Optional[PasswordHasher] = None) -> str:
    """
    @return: a hash of an unknown random secret with C{hasher}'s parameters
        (L{DUMMY_HASH} for the defaults), for verifying against when a user
        does not exist.  Computed once per parameter set.
    """
    h = _hasher(hasher)
    key = (h.time_cost, h.memory_cost, h.parallelism, h.hash_len, h.salt_len)
    if not needsRehash(DUMMY_HASH, h):
        return DUMMY_HASH
    if key not in _dummies:
        _dummies[key] = h.hash(secrets.token_urlsafe(32))
    return _dummies[key]


#: Seconds a successful verification is remembered ([limits]
#: login_cache_ttl; 0 turns the cache off).  Counted from the verification,
#: not renewed by hits: a client pays one Argon2 verification per this
#: many seconds, however often it logs in.
LOGIN_CACHE_TTL = 600.0

#: Verifications remembered at most (the oldest are forgotten first):
#: about 160 bytes each, so at most 2 MiB.
LOGIN_CACHE_SIZE = 10000


def _field(value: bytes) -> bytes:
    """A length-prefixed field, so that no two field lists give one input."""
    return len(value).to_bytes(4, "big") + value


class LoginCache:
    """
    Successful password verifications of the last C{ttl} seconds, each
    remembered as HMAC-SHA256, under a random key made when the cache is
    (once per process), of the user's address, the stored hash and the
    password.  Only successes are added: a wrong password is never
    remembered, and costs its full verification every time.

    Because the stored hash is part of the key, a password change (or any
    other change of the stored hash) makes the old entries miss at once;
    a removed user has no stored hash to look up.

    Nothing here blocks or hashes slowly: one HMAC per call.

    @param clock: anything with C{seconds()} (an L{IReactorTime}).
    @param ttl: seconds an entry lives; 0 or less: nothing is remembered.
    @param size: entries at most; the oldest are dropped first.
    @param key: the HMAC key (for tests); a fresh random one if not given.
    """

    def __init__(self, clock, ttl: float = LOGIN_CACHE_TTL, size: int = LOGIN_CACHE_SIZE, key: Optional[bytes] = None) -> None:
        self._clock = clock
        self.ttl = ttl
        self.size = size
        self._key = key if key is not None else os.urandom(32)
        # digest -> expiry time, oldest first (every entry lives ttl
        # seconds, so this is also the order of expiry).
        self._entries: "OrderedDict[bytes, float]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.size > 0

    def _digest(self, address: str, stored: str, password: Password) -> Optional[bytes]:
        """
        @return: the entry's key, or L{None} for a password that cannot
            verify at all (not text or bytes, or text that is not Unicode).
        """
        if not isinstance(password, (str, bytes)):
            return None
        password = _prepare(password)
        try:
            if isinstance(password, str):
                # Bytes left as they are by _prepare are not UTF-8, so they
                # never equal a text password's encoding.
                password = password.encode("utf-8")
            fields = _field(address.encode("utf-8", "surrogatepass")) + _field(stored.encode("utf-8", "surrogatepass"))
        except (UnicodeEncodeError, AttributeError):
            return None
        return hmac.new(self._key, fields + password, hashlib.sha256).digest()

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            expiry = next(iter(entries.values()))
            if now < expiry <= now + self.ttl:
                break
            entries.popitem(last=False)

    def hit(self, address: str, stored: str, password: Password) -> bool:
        """
        @return: whether C{password} verified against C{stored} for
            C{address} less than C{ttl} seconds ago.
        """
        if not self._entries:
            return False
        digest = self._digest(address, stored, password)
        if digest is None:
            return False
        expiry = self._entries.get(digest)
        if expiry is None:
            return False
        now = self._clock.seconds()
        # An expiry further away than ttl means the clock went back: trust
        # neither.
        if now < expiry <= now + self.ttl:
            return True
        del self._entries[digest]
        return False

    def add(self, address: str, stored: str, password: Password) -> None:
        """
        Remember that C{password} just verified against C{stored}.
        """
        if not self.enabled:
            return
        digest = self._digest(address, stored, password)
        if digest is None:
            return
        now = self._clock.seconds()
        self._expire(now)
        self._entries.pop(digest, None)
        self._entries[digest] = now + self.ttl
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()
