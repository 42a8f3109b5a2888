# -*- test-case-name: tests.test_dkim -*-
"""
DKIM keys (RFC 6376, RFC 8463) and the signing of submitted mail.

Keys live in the data dir, one PEM file each (mode 0600):
C{dkim/DOMAIN/SELECTOR.TYPE.pem}, TYPE being C{rsa} (2048 bits, PKCS #1)
or C{ed25519} (PKCS #8).  C{mailnet-admin dkim generate} makes them and
prints the DNS TXT record to publish at C{SELECTOR._domainkey.DOMAIN}.

A message is signed with one key of each type its From domain has (RSA
first, then Ed25519 as a second signature, RFC 8463 §1): the key whose
selector is C{[dkim] selector} if there is one, else the newest.  So a key
can be generated and published under a new selector before it is used:
see the rotation steps in C{docs/admin-guide.rst}.

The cryptography and canonicalization are dkimpy's; signing reads the key
file and hashes the whole message, so it runs in a worker thread.
"""

import base64
import os
import re
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

import attr
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailnet.address import normalizeDomain
from mailnet.errors import MailnetError

KEY_TYPES = ("rsa", "ed25519")
RSA_BITS = 2048
DEFAULT_SELECTOR = "s1"

#: RFC 6376 §5.4: the header fields signed when present, in this order.
SIGNED_HEADERS = (
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
)
#: RFC 6376 §8.15: named once more than they occur, so that no one can add
#: another (a second From shown instead of the signed one).
OVERSIGNED = ("From", "To", "Subject")

# RFC 6376 §3.1: a selector is a sub-domain: dot-separated labels.
_SELECTOR = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


class BadSelector(MailnetError):
    """{selector!r} is not a valid DKIM selector: letters, digits and hyphens, in dot-separated labels"""


class KeyExists(MailnetError):
    """{domain} already has a key with selector {selector} ({type}): choose another with --selector, or remove it first"""


class NoSuchKey(MailnetError):
    """{domain} has no DKIM key{selector}"""


def checkSelector(selector: str) -> str:
    """
    @return: C{selector}, lower-cased.
    @raise BadSelector: it is not a DNS sub-domain.
    """
    if len(selector) > 200 or not _SELECTOR.fullmatch(selector):
        raise BadSelector(selector=selector)
    return selector.lower()


def txtStrings(record: str, size: int = 255) -> List[str]:
    """RFC 1035 §3.3.14 / RFC 7208 §3.3: a TXT record's strings are at most 255 octets each."""
    return [record[i : i + size] for i in range(0, len(record), size)] or [""]


@attr.s(frozen=True, auto_attribs=True)
class DKIMKey:
    """One key file."""

    domain: str
    selector: str
    type: str
    path: str
    created: float

    @property
    def dnsName(self) -> str:
        """RFC 6376 §3.6.2.1: where the public key is published."""
        return "%s._domainkey.%s" % (self.selector, self.domain)

    def privateKey(self) -> object:
        with open(self.path, "rb") as f:
            return serialization.load_pem_private_key(f.read(), password=None)

    def publicKeyData(self) -> bytes:
        key = self.privateKey()
        if isinstance(key, ed25519.Ed25519PrivateKey):
            # RFC 8463 §4.2: the raw 32-octet public key.
            return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert isinstance(key, rsa.RSAPrivateKey)
        # RFC 6376 §3.6.1: the DER SubjectPublicKeyInfo.
        return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def record(self) -> str:
        """The TXT record's value (RFC 6376 §3.6.1)."""
        return "v=DKIM1; k=%s; p=%s" % (self.type, base64.b64encode(self.publicKeyData()).decode("ascii"))

    def zoneLine(self) -> str:
        """The record as a zone-file line, its value split into 255-octet strings."""
        return "%s. TXT %s" % (self.dnsName, " ".join('"%s"' % s for s in txtStrings(self.record())))

    def bits(self) -> int:
        key = self.privateKey()
        return key.key_size if isinstance(key, rsa.RSAPrivateKey) else 256

    def dkimpyKey(self) -> bytes:
        """
        The private key as dkimpy's C{sign} takes it; remembered while the
        file stays the same (loading checks an RSA key, which takes long).
        """
        status = os.stat(self.path)
        cacheKey = (self.path, status.st_mtime_ns, status.st_size)
        with _cacheLock:
            cached = _dkimpyKeys.get(cacheKey)
        if cached is None:
            cached = self._loadDkimpyKey()
            with _cacheLock:
                if len(_dkimpyKeys) >= _CACHE_ENTRIES:
                    _dkimpyKeys.clear()
                _dkimpyKeys[cacheKey] = cached
        return cached

    def _loadDkimpyKey(self) -> bytes:
        key = self.privateKey()
        if isinstance(key, ed25519.Ed25519PrivateKey):
            seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
            return base64.b64encode(seed)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )


_CACHE_ENTRIES = 1000
_cacheLock = threading.Lock()
_dkimpyKeys: Dict[Tuple[str, int, int], bytes] = {}
_rsaKeys: Dict[int, Any] = {}


def _rsaSign(hash: Any, privateKey: Dict[str, int]) -> bytes:
    """
    RSASSA-PKCS1-v1_5 (RFC 8017 §8.2.1) by OpenSSL, for dkimpy's signer:
    its own pure-Python modular arithmetic takes some 25 ms per signature
    (holding the GIL), OpenSSL well under one.  The same signature either way.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    algorithm = {"sha256": hashes.SHA256(), "sha1": hashes.SHA1()}.get(hash.name)
    if algorithm is None:
        return _dkimpyRSASign(hash, privateKey)
    with _cacheLock:
        key = _rsaKeys.get(privateKey["modulus"])
    if key is None:
        numbers = rsa.RSAPrivateNumbers(
            p=privateKey["prime1"],
            q=privateKey["prime2"],
            d=privateKey["privateExponent"],
            dmp1=privateKey["exponent1"],
            dmq1=privateKey["exponent2"],
            iqmp=privateKey["coefficient"],
            public_numbers=rsa.RSAPublicNumbers(privateKey["publicExponent"], privateKey["modulus"]),
        )
        key = numbers.private_key()
        with _cacheLock:
            if len(_rsaKeys) >= _CACHE_ENTRIES:
                _rsaKeys.clear()
            _rsaKeys[privateKey["modulus"]] = key
    return key.sign(hash.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm))


_dkimpyRSASign: Any = None


def _useOpenSSL() -> None:
    """Make dkimpy's signer (which calls its module's name) use L{_rsaSign}."""
    global _dkimpyRSASign
    import dkim

    with _cacheLock:
        if _dkimpyRSASign is None:
            _dkimpyRSASign = dkim.RSASSA_PKCS1_v1_5_sign
            dkim.RSASSA_PKCS1_v1_5_sign = _rsaSign


#: dkimpy's body canonicalization runs a regular expression over the whole
#: body, and C{re.sub} keeps an object per match until it joins them: some
#: 40 times the size of a text body at once (85 MB for 2 MB of prose).  The
#: same substitutions, a block of whole lines at a time, hold one block's.
_CANONICAL_BLOCK = 64 * 1024


def _blockwise(substitute: Any) -> Any:
    """
    C{substitute} (one of dkimpy's whitespace substitutions, whose matches
    never span a CRLF) applied to blocks of whole lines.
    """

    def apply(content: bytes) -> bytes:
        if len(content) <= _CANONICAL_BLOCK:
            return substitute(content)
        out = []
        start = 0
        while start < len(content):
            end = content.find(b"\r\n", start + _CANONICAL_BLOCK)
            end = len(content) if end < 0 else end + 2
            out.append(substitute(content[start:end]))
            start = end
        return b"".join(out)

    apply.original = substitute  # type: ignore[attr-defined]
    return apply


def _parse(message: bytes) -> Any:
    """
    dkimpy's C{rfc822_parse}, which splits the whole message into a list
    of lines (ten times the size of a body of short lines), for the header
    section only when the message has CRLF line ends throughout (as the
    SMTP server ensures): the body is then what follows the blank line.
    """
    end = message.find(b"\r\n\r\n")
    if end < 0 or message.startswith(b"\r\n") or message.count(b"\n") != message.count(b"\r\n"):
        return _parse.original(message)  # type: ignore[attr-defined]
    headers, _ = _parse.original(message[: end + 4])  # type: ignore[attr-defined]
    return headers, message[end + 4 :]


def useLightCanonicalization() -> None:
    """Make dkimpy parse and canonicalize as above (once; the same results)."""
    import dkim
    import dkim.canonicalization as canonicalization

    with _cacheLock:
        if not hasattr(dkim.rfc822_parse, "original"):
            _parse.original = dkim.rfc822_parse  # type: ignore[attr-defined]
            dkim.rfc822_parse = _parse
        for name in ("strip_trailing_whitespace", "compress_whitespace"):
            function = getattr(canonicalization, name)
            if not hasattr(function, "original"):
                setattr(canonicalization, name, _blockwise(function))


class KeyStore:
    """
    The DKIM keys in a data dir.

    @param defaultSelector: C{[dkim] selector}: the selector of generated
        keys, and the one preferred for signing.
    """

    def __init__(self, dataDir: str, defaultSelector: str = DEFAULT_SELECTOR) -> None:
        self.directory = os.path.join(dataDir, "dkim")
        self.dataDir = dataDir
        self.defaultSelector = defaultSelector

    def _domainDirectory(self, domain: str) -> str:
        return os.path.join(self.directory, normalizeDomain(domain))

    def keys(self, domain: Optional[str] = None) -> List[DKIMKey]:
        """Every key (of C{domain}), by domain, then oldest first."""
        if domain is not None:
            domains = [normalizeDomain(domain)]
        else:
            try:
                domains = sorted(os.listdir(self.directory))
            except FileNotFoundError:
                return []
        found = []
        for name in domains:
            directory = os.path.join(self.directory, name)
            try:
                files = os.listdir(directory)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for filename in files:
                parts = filename.rsplit(".", 2)
                if len(parts) != 3 or parts[2] != "pem" or parts[1] not in KEY_TYPES:
                    continue
                path = os.path.join(directory, filename)
                try:
                    created = os.stat(path).st_mtime
                except FileNotFoundError:
                    continue
                found.append(DKIMKey(name, parts[0], parts[1], path, created))
        found.sort(key=lambda k: (k.domain, k.created, k.selector))
        return found

    def generate(self, domain: str, selector: Optional[str] = None, type: str = "rsa") -> DKIMKey:
        """
        Make a key and write it (mode 0600; owned by the data dir's owner
        when run as root, so the daemon can read it after dropping
        privileges).

        @raise KeyExists: the selector is taken for the domain.
        """
        if type not in KEY_TYPES:
            raise ValueError("type must be rsa or ed25519")
        domain = normalizeDomain(domain)
        selector = checkSelector(selector or self.defaultSelector)
        for key in self.keys(domain):
            if key.selector == selector:
                raise KeyExists(domain=domain, type=key.type, selector=selector)
        if type == "rsa":
            private: object = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
            pem = private.private_bytes(  # type: ignore[attr-defined]
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            )
        else:
            private = ed25519.Ed25519PrivateKey.generate()
            pem = private.private_bytes(  # type: ignore[attr-defined]
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        directory = self._domainDirectory(domain)
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        path = os.path.join(directory, "%s.%s.pem" % (selector, type))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            owner = os.stat(self.dataDir)
            for made in (self.directory, directory, path):
                os.chown(made, owner.st_uid, owner.st_gid)
        return DKIMKey(domain, selector, type, path, os.stat(path).st_mtime)

    def remove(self, domain: str, selector: Optional[str] = None) -> List[DKIMKey]:
        """
        Delete the domain's key with C{selector}, or all its keys.

        @return: the keys removed.
        @raise NoSuchKey: there was none.
        """
        domain = normalizeDomain(domain)
        keys = [k for k in self.keys(domain) if selector is None or k.selector == selector.lower()]
        if not keys:
            raise NoSuchKey(domain=domain, selector=" with selector %s" % (selector,) if selector else "")
        for key in keys:
            os.remove(key.path)
        return keys

    def signingKeys(self, domain: str) -> List[DKIMKey]:
        """
        The keys that sign mail from C{domain}: per type, the one with the
        default selector, else the newest; RSA first.
        """
        try:
            keys = self.keys(domain)
        except MailnetError:
            return []
        chosen = []
        for type in KEY_TYPES:
            ofType = [k for k in keys if k.type == type]
            if not ofType:
                continue
            preferred = [k for k in ofType if k.selector == self.defaultSelector]
            chosen.append(preferred[0] if preferred else ofType[-1])
        return chosen


def headersToSign(message: bytes) -> List[bytes]:
    """
    The C{h=} list: each of L{SIGNED_HEADERS} as often as it occurs, then
    L{OVERSIGNED} once more.
    """
    end = message.find(b"\r\n\r\n")
    section = message[: end + 2] if end >= 0 else message
    counts: Dict[bytes, int] = {}
    for line in section.split(b"\r\n"):
        if not line or line[:1] in (b" ", b"\t"):
            continue
        name = line.split(b":", 1)[0].strip().lower()
        counts[name] = counts.get(name, 0) + 1
    names: List[bytes] = []
    for header in SIGNED_HEADERS:
        name = header.lower().encode("ascii")
        names.extend([name] * counts.get(name, 0))
    names.extend(h.lower().encode("ascii") for h in OVERSIGNED)
    return names


def sign(message: bytes, keys: Sequence[DKIMKey]) -> bytes:
    """
    Sign C{message} (CRLF line endings) with each key: relaxed/relaxed, no
    C{l=} (RFC 6376 §8.2: a body length lets others append).

    @return: the C{DKIM-Signature} header fields to put on top, in the
        order of C{keys} (RSA topmost: verifiers that check only the
        first signature may not know Ed25519).
    """
    import dkim

    _useOpenSSL()
    useLightCanonicalization()
    include = headersToSign(message)
    signatures = []
    for key in keys:
        algorithm = b"ed25519-sha256" if key.type == "ed25519" else b"rsa-sha256"
        signer = dkim.DKIM(message, signature_algorithm=algorithm)
        signatures.append(
            signer.sign(
                key.selector.encode("ascii"),
                key.domain.encode("ascii"),
                key.dkimpyKey(),
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=include,
            )
        )
    return b"".join(signatures)
