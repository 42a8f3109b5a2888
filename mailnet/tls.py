# -*- test-case-name: tests.test_tls -*-
"""
Certificates and TLS contexts.

When the administrator gives no certificate, a self-signed one for the
server's host name is generated into the data dir on first start (with
C{cryptography}) and reused afterwards.  Contexts are built with Twisted's
L{CertificateOptions}: TLS 1.2 at least, and the modern cipher list
(RFC 9325).
"""

import datetime
import hashlib
import ipaddress
import os
from typing import List, Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory, IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from mailnet.errors import ConfigError

log = Logger()

# RFC 9325 §4.2: AEAD ciphers with forward secrecy only.
_CIPHERS = (
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
)


def generateSelfSigned(hostname: str, certPath: str, keyPath: str, days: int = 3650) -> None:
    """
    Write a self-signed ECDSA P-256 certificate for C{hostname} (and
    C{localhost}) and its key, the key readable by the owner only.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])
    now = datetime.datetime.now(datetime.timezone.utc)
    altNames: List[x509.GeneralName] = [x509.DNSName(hostname)]
    if hostname != "localhost":
        altNames.append(x509.DNSName("localhost"))
    altNames.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(altNames), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    keyBytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(keyPath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(keyBytes)
    with open(certPath, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def certificatePaths(dataDir: str, cert: Optional[str], key: Optional[str]) -> Tuple[str, str, bool]:
    """
    @return: C{(certPath, keyPath, selfSigned)}: the configured pair, or
        the paths of the data dir's self-signed pair (which may not exist
        yet).
    """
    if cert and key:
        return cert, key, False
    return os.path.join(dataDir, "tls", "selfsigned.pem"), os.path.join(dataDir, "tls", "selfsigned.key"), True


def ensureCertificate(dataDir: str, hostname: str, cert: Optional[str], key: Optional[str]) -> Tuple[str, str, bool]:
    """
    @return: C{(certPath, keyPath, generated)}: the configured pair, or the
        data dir's self-signed pair, generated now if missing.
    """
    certPath, keyPath, selfSigned = certificatePaths(dataDir, cert, key)
    if not selfSigned or (os.path.exists(certPath) and os.path.exists(keyPath)):
        return certPath, keyPath, False
    os.makedirs(os.path.dirname(certPath), mode=0o700, exist_ok=True)
    generateSelfSigned(hostname, certPath, keyPath)
    return certPath, keyPath, True


def _readPEM(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(where=path, problem="cannot read the TLS %s: %s" % (what, e.strerror))


def loadCertificateChain(certPath: str) -> Tuple[crypto.X509, list]:
    """Read a PEM file: the leaf certificate first, then any chain."""
    pem = _readPEM(certPath, "certificate")
    blocks = [b"-----BEGIN CERTIFICATE-----" + part for part in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]]
    if not blocks:
        raise ConfigError(where=certPath, problem="no PEM certificate found")
    try:
        certs = [crypto.load_certificate(crypto.FILETYPE_PEM, b) for b in blocks]
    except crypto.Error as e:
        raise ConfigError(where=certPath, problem="not a valid PEM certificate (%s)" % (e,))
    return certs[0], certs[1:]


def fingerprint(certPath: str) -> str:
    """The leaf certificate's SHA-256 fingerprint, C{AB:CD:...}."""
    leaf, _ = loadCertificateChain(certPath)
    der = crypto.dump_certificate(crypto.FILETYPE_ASN1, leaf)
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def certificateNames(certPath: str) -> Tuple[List[str], datetime.datetime]:
    """@return: the DNS names of the leaf certificate and its expiry."""
    pem = _readPEM(certPath, "certificate")
    cert = x509.load_pem_x509_certificate(pem)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return list(names), cert.not_valid_after_utc


def serverContextFactory(certPath: str, keyPath: str) -> ssl.CertificateOptions:
    """
    @return: server TLS options for the certificate (chain allowed) and key.
    @raise ConfigError: a file is missing, unreadable or does not match.
    """
    leaf, chain = loadCertificateChain(certPath)
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, _readPEM(keyPath, "key"))
    except crypto.Error as e:
        raise ConfigError(where=keyPath, problem="not a valid PEM private key (%s)" % (e,))
    options = ssl.CertificateOptions(
        privateKey=key,
        certificate=leaf,
        extraCertChain=chain,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(_CIPHERS),
    )
    try:
        options.getContext().check_privatekey()
    except Exception as e:
        raise ConfigError(where=keyPath, problem="the key does not match the certificate %s (%s)" % (certPath, e))
    return options


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class ReloadableContextFactory:
    """
    Server TLS options that can be swapped (SIGHUP after a certificate
    renewal): new handshakes use the new certificate, established
    connections keep theirs.

    The files are read by L{reload}, or at the first handshake: a daemon
    started as root binds its ports before it drops privileges, and reads
    its files only after.
    """

    def __init__(self, certPath: str, keyPath: str, loadNow: bool = True) -> None:
        self.certPath = certPath
        self.keyPath = keyPath
        self._options: Optional[ssl.CertificateOptions] = None
        if loadNow:
            self.reload()

    def reload(self) -> None:
        """@raise ConfigError: the new files are bad; the old ones stay."""
        self._options = serverContextFactory(self.certPath, self.keyPath)

    def getContext(self) -> SSL.Context:
        if self._options is None:
            self.reload()
        assert self._options is not None
        return self._options.getContext()

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self.getContext(), None)
