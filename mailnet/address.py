# -*- test-case-name: tests.test_address -*-
"""
Mail addresses: validation and normalisation.  No Twisted here.

An address mailnet accepts is C{local@domain} where the local part is a
dot-atom (RFC 5322 §3.2.3; UTF-8 allowed when C{allowUTF8}, RFC 6531) and
the domain is a host name (letters, digits, hyphens; U-labels allowed when
C{allowUTF8}).  Quoted local parts and address literals are refused: they
are legal but rare, and they cannot be mailbox names on disk.

Normalised form: the whole address lower-cased (mailnet treats local parts
case-insensitively, as Postfix and Dovecot do by default).
"""

import functools
import re
import unicodedata
from typing import Iterable, Optional, Tuple

from mailnet.errors import BadAddress, BadDomain

# RFC 5321 §4.5.3.1: local part 64, domain 255, path 256 octets.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_DOT_ATOM = re.compile(r"[%s]+(\.[%s]+)*\Z" % (_ATEXT, _ATEXT))
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _hasControl(text: str) -> bool:
    # A regular expression: on every address of every message (issue 14).
    return _CONTROL.search(text) is not None


def isDomain(domain: str, allowUTF8: bool = False) -> bool:
    """
    @return: whether C{domain} is a syntactically valid host name.
    """
    if not domain or len(domain.encode("utf-8")) > MAX_DOMAIN:
        return False
    if domain.endswith("."):
        return False
    for label in domain.split("."):
        if allowUTF8 and not label.isascii():
            try:
                ascii = label.encode("idna").decode("ascii")
            except UnicodeError:
                return False
            if not _LABEL.match(ascii):
                return False
        elif not _LABEL.match(label):
            return False
    return True


def normalizeDomain(domain: str, allowUTF8: bool = True) -> str:
    """
    @return: the lower-cased domain.
    @raise BadAddress: it is not a valid host name.
    """
    if not isDomain(domain, allowUTF8):
        raise BadDomain(address=domain)
    return domain.lower()


def splitAddress(address: str) -> Tuple[str, str]:
    """
    Split at the last C{@}.

    @raise BadAddress: there is no C{@}.
    """
    local, at, domain = address.rpartition("@")
    if not at:
        raise BadAddress(address=address, reason="it has no @domain")
    return local, domain


def normalizeAddress(address: str, allowUTF8: bool = False) -> str:
    """
    Validate C{address} and return its normalised (lower-case) form.

    @param allowUTF8: accept non-ASCII local parts and domains (the client
        used the SMTPUTF8 extension).
    @raise BadAddress: with the reason in words.
    """
    # Every MAIL and RCPT asks, mostly for the same few addresses: the
    # valid ones are remembered (a bad one raises, and is not).
    return _normalizeAddress(address, allowUTF8)


#: How many valid addresses L{normalizeAddress} and L{isSafeMailboxName}
#: remember (some 300 octets each at most).
ADDRESS_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def _normalizeAddress(address: str, allowUTF8: bool) -> str:
    if _hasControl(address) or " " in address:
        raise BadAddress(address=address, reason="it contains spaces or control characters")
    if len(address.encode("utf-8")) > MAX_PATH - 2:
        raise BadAddress(address=address, reason="it is longer than 254 octets")
    if not allowUTF8 and not address.isascii():
        raise BadAddress(address=address, reason="non-ASCII addresses need SMTPUTF8")
    local, domain = splitAddress(address)
    if not local:
        raise BadAddress(address=address, reason="the local part is empty")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise BadAddress(address=address, reason="the local part is longer than 64 octets")
    asciiLocal = local
    if allowUTF8 and not local.isascii():
        # RFC 6531 §3.3: UTF-8 characters are atext too.
        asciiLocal = "".join("a" if ord(c) > 0x7F else c for c in local)
    if not _DOT_ATOM.match(asciiLocal):
        raise BadAddress(address=address, reason="the local part is not a dot-atom")
    if not isDomain(domain, allowUTF8):
        raise BadAddress(address=address, reason="the domain is not a valid host name")
    return canonicalAddress(address)


def canonicalAddress(address: str) -> str:
    """
    The form in which addresses are stored and looked up: lower case, and
    non-ASCII text in Unicode normalisation form C (RFC 6532 §3.1), so that
    the same name typed as composed or decomposed characters is one
    account.  No validation.
    """
    address = address.lower()
    if not address.isascii():
        address = unicodedata.normalize("NFC", address)
    return address


def foldedAddress(address: str) -> str:
    """
    The key under which look-alike addresses collide: NFKC case-folded
    without format characters (close to Unicode's C{NFKC_Casefold}, as
    RFC 8265's PRECIS profiles fold user names), so that C{ａｌｉｃｅ} (full
    width), C{ALICE}, C{al<ZWSP>ice} and C{alice} are one key.  Used to
    refuse new names that look like existing ones.
    """
    if address.isascii():
        return address.lower()
    # Invisible format characters (zero-width space and joiners, soft
    # hyphen) go too, as NFKC_Casefold drops default-ignorable ones.
    text = "".join(c for c in unicodedata.normalize("NFKC", address) if unicodedata.category(c) != "Cf")
    return unicodedata.normalize("NFKC", text.casefold())


def lookAlike(address: str, existing: Iterable[str]) -> Optional[str]:
    """
    @return: the first of C{existing} that is not C{address} itself but
        folds to the same key (L{foldedAddress}), or L{None}.
    """
    key = foldedAddress(address)
    for other in existing:
        if other != address and foldedAddress(other) == key:
            return other
    return None


def mailboxAddress(address: str) -> str:
    """
    The one validation of a mailbox's address, used by C{mailnet-admin
    user add} and the account store (RCPT and login apply the same
    L{isSafeMailboxName} to normalised addresses): a valid address (UTF-8
    allowed) whose normalised form can name a directory.

    @return: the normalised address (L{canonicalAddress}).
    @raise BadAddress: with the reason in words.
    """
    normalised = normalizeAddress(address, allowUTF8=True)
    if not isSafeMailboxName(normalised):
        raise BadAddress(
            address=address,
            reason="it cannot name a mailbox (no /, \\, :, control characters, '..' or leading dot in either part)",
        )
    return normalised


def isSafeMailboxName(address: str) -> bool:
    """
    @return: whether a normalised address can name a directory under the
        data dir without escaping it (no separators, no C{..}, nothing
        hidden, no control characters).
    """
    if len(address) > MAX_PATH:
        # Not an address at all (a login name can be long): not remembered.
        return _isSafeMailboxName(address)
    return _cachedIsSafeMailboxName(address)


def _isSafeMailboxName(address: str) -> bool:
    local, _, domain = address.rpartition("@")
    for part in (local, domain):
        if not part or part.startswith(".") or ".." in part:
            return False
        if "/" in part or "\\" in part or "\0" in part or ":" in part or _hasControl(part):
            return False
    return True


_cachedIsSafeMailboxName = functools.lru_cache(maxsize=ADDRESS_CACHE_SIZE)(_isSafeMailboxName)
