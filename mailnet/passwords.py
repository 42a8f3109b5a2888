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
"""

import secrets
import unicodedata
from typing import Dict, Optional, Tuple, Union

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = [
    "DEFAULT_HASHER",
    "DUMMY_HASH",
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
