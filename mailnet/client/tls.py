# -*- test-case-name: tests.test_client_smtp -*-
"""
Where and how the mail client connects: L{ServerEndpoint} (host, port, TLS
mode, trust) and the client TLS options built from it.

Certificates are verified against the host name with C{service_identity}
(through L{twisted.internet.ssl.optionsForClientTLS}), trusting the
platform's roots or the certificates of a C{--cafile}.  Verification can
be turned off only explicitly (C{insecure}); callers warn about it.

Connection failures are turned into L{mailnet.errors.ClientError}s that
say what happened in words a person can act on: L{clientError}.
"""

import enum
import hashlib
from typing import Any, Callable, List, Optional

import attr
from OpenSSL import SSL, crypto
from twisted.internet import error as ierror
from twisted.internet import ssl
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IStreamClientEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from mailnet.errors import (
    ClientError,
    ConfigError,
    ConnectFailed,
    NoGreeting,
    ServerTimeout,
    TLSFailed,
    WrongService,
)

# A transcript sink: called with ("C" or "S", line text) for each line.
Transcript = Callable[[str, str], None]


class TLSMode(enum.Enum):
    """
    How a connection is protected.

      - C{starttls}: plain connect, then STARTTLS (RFC 3207) or STLS
        (RFC 2595 §4); refuse to go on if the server does not offer it.
      - C{implicit}: TLS from the first byte (RFC 8314 §3).
      - C{none}: no TLS at all (only for trusted networks and tests).
    """

    starttls = "starttls"
    implicit = "implicit"
    none = "none"


# Default ports (RFC 6409 §3.1, RFC 8314 §3.3, RFC 1939 §3).
DEFAULT_PORTS = {
    ("smtp", TLSMode.starttls): 587,
    ("smtp", TLSMode.implicit): 465,
    ("smtp", TLSMode.none): 587,
    ("pop3", TLSMode.starttls): 110,
    ("pop3", TLSMode.implicit): 995,
    ("pop3", TLSMode.none): 110,
    ("imap", TLSMode.starttls): 143,  # RFC 9051 §2.1
    ("imap", TLSMode.implicit): 993,  # RFC 8314 §7.3
    ("imap", TLSMode.none): 143,
}


#: How long to wait for the greeting of a server we talk to in the clear
#: first (C{starttls}, C{none}): a server that says nothing is most likely
#: an implicit-TLS port waiting for our TLS hello, and saying so soon is
#: better than the full reply timeout.
GREETING_TIMEOUT = 15.0

#: What each protocol's option is called, and its ports by TLS mode.
_SERVICES = {
    "smtp": ("an SMTP submission server", "--smtp-port", "587 with --tls starttls, 465 with --tls implicit"),
    "pop3": ("a POP3 server", "--pop3-port", "110 with --tls starttls, 995 with --tls implicit"),
    "imap": ("an IMAP server", "--imap-port", "143 with --tls starttls, 993 with --tls implicit"),
}


def greetingKind(line: bytes) -> Optional[str]:
    """
    @return: which service greets with C{line} (C{"smtp"}, C{"pop3"},
        C{"imap"}), or L{None} when it is none we know.
    """
    if line[:3].isdigit() and line[3:4] in (b" ", b"-", b""):
        return "smtp"  # RFC 5321 §4.2: a three-digit reply code
    if line.startswith((b"+OK", b"-ERR")):
        return "pop3"  # RFC 1939 §3
    if line.startswith((b"* OK", b"* PREAUTH", b"* BYE")):
        return "imap"  # RFC 9051 §7.1
    return None


def shownLine(line: bytes, limit: int = 60) -> str:
    """A line from the network, made safe to show: escaped, and cut."""
    text = line[:limit].decode("utf-8", "replace")
    shown = repr(text)
    return shown + ("..." if len(line) > limit else "")


def wrongService(endpoint: "ServerEndpoint", expected: str, greeting: bytes) -> Optional[ClientError]:
    """
    @param expected: C{"smtp"} or C{"pop3"}: what we meant to talk to.
    @return: the error for a greeting from another kind of server (the
        wrong port), or L{None} when the greeting is not recognisably one.
    """
    kind = greetingKind(greeting)
    if kind is None or kind == expected:
        return None
    what = _SERVICES[kind][0] if kind in _SERVICES else "an IMAP server"
    name, option, ports = _SERVICES[expected]
    return WrongService(
        host=endpoint.host,
        port=endpoint.port,
        what=what,
        expected=name,
        greeting=shownLine(greeting),
        hint="check %s (usually %s)" % (option, ports),
    )


def noGreeting(endpoint: "ServerEndpoint", seconds: float) -> ClientError:
    """@return: the error for a server that said nothing at all."""
    return NoGreeting(host=endpoint.host, port=endpoint.port, seconds=_seconds(seconds), implicitPorts="465, 995")


def loadTrustRoot(cafile: Optional[str]) -> Any:
    """
    @return: the trust root for verification: every certificate in the PEM
        file C{cafile}, or the platform's roots when C{cafile} is L{None}.
    @raise ConfigError: the file cannot be read or holds no certificate.
    """
    if cafile is None:
        return ssl.platformTrust()
    try:
        with open(cafile, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise ConfigError(where=cafile, problem="cannot read the CA file: %s" % (e.strerror,))
    marker = b"-----BEGIN CERTIFICATE-----"
    blocks = [marker + part for part in pem.split(marker)[1:]]
    try:
        certificates = [ssl.Certificate.loadPEM(block) for block in blocks]
    except Exception as e:
        raise ConfigError(where=cafile, problem="not a valid PEM certificate (%s)" % (e,))
    if not certificates:
        raise ConfigError(where=cafile, problem="no PEM certificate found")
    return ssl.trustRootFromCertificates(certificates)


@implementer(IOpenSSLClientConnectionCreator)
class VerifyingCreator:
    """
    Client TLS options that remember the connection they create, so that
    after a failed handshake we can say which certificate the server
    showed.

    @ivar hostname: the name the certificate must be valid for.
    """

    def __init__(self, hostname: str, inner: IOpenSSLClientConnectionCreator) -> None:
        self.hostname = hostname
        self._inner = inner
        self.connection: Optional[SSL.Connection] = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        self.connection = self._inner.clientConnectionForTLS(tlsProtocol)
        return self.connection

    def peerCertificates(self) -> List[crypto.X509]:
        """The chain the server presented (possibly empty)."""
        if self.connection is None:
            return []
        try:
            chain = self.connection.get_peer_cert_chain()
        except Exception:
            chain = None
        if chain:
            return list(chain)
        try:
            leaf = self.connection.get_peer_certificate()
        except Exception:
            leaf = None
        return [leaf] if leaf is not None else []


def describeCertificate(certificate: crypto.X509) -> str:
    """
    @return: subject, names, issuer and SHA-256 fingerprint of a
        certificate, for error messages.
    """
    cryptography = certificate.to_cryptography()
    from cryptography import x509

    try:
        names = cryptography.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        altNames = [str(n.value) for n in names]
    except x509.ExtensionNotFound:
        altNames = []
    digest = hashlib.sha256(crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate)).hexdigest().upper()
    text = "subject %s" % (cryptography.subject.rfc4514_string() or "(empty)",)
    if altNames:
        text += ", names %s" % (", ".join(altNames),)
    issuer = cryptography.issuer.rfc4514_string() or "(empty)"
    if cryptography.issuer == cryptography.subject:
        issuer = "itself (self-signed)"
    text += ", issuer %s, SHA-256 %s" % (
        issuer,
        ":".join(digest[i : i + 2] for i in range(0, 16, 2)) + "...",
    )
    return text


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class ServerEndpoint:
    """
    A server the client talks to, and how.

    @ivar timeout: seconds allowed for connecting and for each reply.
    @ivar allowPlaintext: whether a password may be sent without TLS.
    @ivar insecure: skip certificate verification (still encrypted).
    """

    host: str
    port: int
    tls: TLSMode = TLSMode.starttls
    cafile: Optional[str] = None
    insecure: bool = False
    allowPlaintext: bool = False
    timeout: float = 60.0
    greetingTimeout: float = GREETING_TIMEOUT

    @property
    def firstTimeout(self) -> float:
        """
        Seconds to wait for the server's first words: short when we speak
        in the clear first, since then silence means a TLS port.
        """
        if self.tls is TLSMode.implicit:
            return self.timeout
        return min(self.timeout, self.greetingTimeout)

    def creator(self) -> Optional[VerifyingCreator]:
        """
        @return: the TLS options for this server, or L{None} when TLS is off.
        @raise ConfigError: the CA file is unusable.
        """
        if self.tls is TLSMode.none:
            return None
        inner: IOpenSSLClientConnectionCreator
        if self.insecure:
            # Encrypted but unauthenticated: the user asked for it.
            inner = _InsecureCreator(self.host)
        else:
            inner = ssl.optionsForClientTLS(
                self.host,
                trustRoot=loadTrustRoot(self.cafile),
                extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2},
            )
        return VerifyingCreator(self.host, inner)

    def endpoint(self, reactor: Any, creator: Optional[VerifyingCreator]) -> IStreamClientEndpoint:
        """
        @return: the endpoint to connect to; TLS-wrapped in implicit mode.
        """
        endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, self.host, self.port, timeout=self.timeout)
        if self.tls is TLSMode.implicit:
            assert creator is not None
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint


@implementer(IOpenSSLClientConnectionCreator)
class _InsecureCreator:
    def __init__(self, hostname: str) -> None:
        self._options = ssl.CertificateOptions(verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
        self._hostname = hostname

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._options.getContext(), None)
        connection.set_app_data(tlsProtocol)
        connection.set_connect_state()
        if not _isIPAddress(self._hostname):
            connection.set_tlsext_host_name(self._hostname.encode("idna"))
        return connection


def _isIPAddress(host: str) -> bool:
    from twisted.internet.abstract import isIPAddress, isIPv6Address

    return isIPAddress(host) or isIPv6Address(host)


def _isTLSFailure(value: BaseException) -> bool:
    if isinstance(value, SSL.Error):
        return True
    try:
        from service_identity.exceptions import CertificateError, VerificationError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, (VerificationError, CertificateError))


def _sslReason(value: BaseException) -> str:
    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        reasons = [str(entry[2]) for entry in value.args[0] if len(entry) >= 3 and entry[2]]
        if reasons:
            return "; ".join(reasons)
    return str(value) or value.__class__.__name__


def clientError(reason: Any, endpoint: ServerEndpoint, creator: Optional[VerifyingCreator] = None) -> BaseException:
    """
    Turn why a connection failed into the error a person should see.

    @param reason: a L{Failure} or exception from connecting or from
        C{connectionLost}.
    @return: a L{ClientError} when the reason is recognised, otherwise the
        exception itself (an unexpected failure, shown with its traceback
        in debug mode).
    """
    value = reason.value if isinstance(reason, Failure) else reason
    if isinstance(value, ClientError):
        return value
    where = {"host": endpoint.host, "port": endpoint.port}
    if _isTLSFailure(value) and _plaintextAnswer(value):
        # Our TLS hello was answered with a plaintext greeting.
        return TLSFailed(
            reason="the server answered in plaintext, not TLS: this looks like a STARTTLS port (587, 110); "
            "use --tls starttls, or the implicit-TLS port (465, 995)",
            **where,
        )
    if _isTLSFailure(value):
        certificates = creator.peerCertificates() if creator is not None else []
        shown = describeCertificate(certificates[0]) if certificates else "no certificate seen"
        try:
            from service_identity.exceptions import VerificationError
        except ImportError:  # pragma: no cover
            VerificationError = ()  # type: ignore[assignment,misc]
        if isinstance(value, VerificationError):
            problem = "the certificate is not valid for the name %s (%s)" % (endpoint.host, shown)
        else:
            problem = "cannot verify the certificate for %s: %s (%s)" % (endpoint.host, _sslReason(value), shown)
        if endpoint.cafile is None and not endpoint.insecure:
            problem += "; give its CA with --cafile"
        return TLSFailed(reason=problem, **where)
    if isinstance(value, ierror.DNSLookupError):
        return ConnectFailed(reason="host name not found", **where)
    if isinstance(value, ierror.ConnectionRefusedError):
        return ConnectFailed(reason="connection refused", **where)
    if isinstance(value, (ierror.TimeoutError, ierror.TCPTimedOutError)):
        return ServerTimeout(seconds=_seconds(endpoint.timeout), **where)
    if isinstance(value, ierror.NoRouteError):
        return ConnectFailed(reason="no route to host", **where)
    if isinstance(value, ierror.ConnectionLost) or isinstance(value, ierror.ConnectionDone):
        return ConnectFailed(reason="the server closed the connection", **where)
    if isinstance(value, ierror.ConnectError):
        return ConnectFailed(reason=(value.osError and str(value.osError)) or str(value), **where)
    return value


def _plaintextAnswer(value: BaseException) -> bool:
    """OpenSSL's words for a reply that was no TLS record at all."""
    reason = _sslReason(value).lower()
    return any(
        words in reason
        for words in ("wrong version number", "unknown protocol", "packet length too long", "http request")
    )


def _seconds(value: float) -> str:
    return ("%g" % (value,))
