"""
Tests for L{mailnet.client.smtp} and L{mailnet.client.tls}: transcripts on
L{StringTransport}, and TLS and error paths against a scripted submission
server on 127.0.0.1.
"""

import base64
import os
from typing import Dict, List, Optional

import attr
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import LineReceiver
from twisted.trial import unittest

from mailnet.client.smtp import (
    RecipientResult,
    SendResult,
    SubmissionClient,
    sendMessage,
    wireData,
)
from mailnet.client.tls import (
    DEFAULT_PORTS,
    ServerEndpoint,
    TLSMode,
    clientError,
    loadTrustRoot,
)
from mailnet.errors import (
    AuthenticationFailed,
    ConfigError,
    ConnectFailed,
    MessageTooLarge,
    PlaintextRefused,
    RecipientsRefused,
    ServerError,
    ServerTimeout,
    TLSFailed,
    TLSUnavailable,
)
from mailnet.testing import makeCertificate
from mailnet.tls import serverContextFactory

MESSAGE = b"From: alice@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"


# --- a scripted submission server -----------------------------------------


@attr.s(auto_attribs=True)
class FakeSMTPConfig:
    """How the fake server behaves, and what it saw."""

    users: Dict[str, str] = attr.ib(factory=lambda: {"alice@example.test": "secret"})
    refuse: Dict[str, str] = attr.ib(factory=dict)  # address -> reply line
    size: Optional[int] = None
    offerStartTLS: bool = True
    contextFactory: object = None
    implicit: bool = False
    authMechanisms: str = "PLAIN LOGIN"
    dataReply: str = "250 2.0.0 queued as 42"
    messages: List[tuple] = attr.ib(factory=list)
    lines: List[bytes] = attr.ib(factory=list)


class FakeSMTPServer(LineReceiver):
    """Just enough ESMTP (RFC 5321, 3207, 4954, 1870) to test a client."""

    delimiter = b"\r\n"

    def __init__(self, config: FakeSMTPConfig) -> None:
        self.config = config
        self.tls = config.implicit
        self.data: Optional[List[bytes]] = None
        self.login: Optional[str] = None
        self.recipients: List[str] = []
        self.sender: Optional[str] = None

    def connectionMade(self) -> None:
        self.sendLine(b"220 fake.example.test ESMTP")

    def reply(self, text: str) -> None:
        self.sendLine(text.encode("utf-8"))

    def lineReceived(self, line: bytes) -> None:
        self.config.lines.append(line)
        if self.data is not None:
            if line == b".":
                self.config.messages.append((self.sender, list(self.recipients), b"\r\n".join(self.data) + b"\r\n"))
                self.data = None
                self.reply(self.config.dataReply)
            else:
                self.data.append(line[1:] if line.startswith(b".") else line)
            return
        if getattr(self, "_authStep", None):
            self._authStep(line)
            return
        verb, _, rest = line.decode("utf-8").partition(" ")
        getattr(self, "do_" + verb.upper(), self.unknown)(rest)

    def unknown(self, rest: str) -> None:
        self.reply("500 5.5.2 unknown command")

    def do_EHLO(self, rest: str) -> None:
        lines = ["fake.example.test"]
        if self.config.size is not None:
            lines.append("SIZE %d" % (self.config.size,))
        if self.config.offerStartTLS and not self.tls:
            lines.append("STARTTLS")
        if self.config.authMechanisms:
            lines.append("AUTH " + self.config.authMechanisms)
        lines.append("8BITMIME")
        for line in lines[:-1]:
            self.reply("250-" + line)
        self.reply("250 " + lines[-1])

    def do_STARTTLS(self, rest: str) -> None:
        self.reply("220 2.0.0 go ahead")
        self.transport.startTLS(self.config.contextFactory)
        self.tls = True

    def _check(self, user: str, password: str) -> None:
        self._authStep = None
        if self.config.users.get(user) == password:
            self.login = user
            self.reply("235 2.7.0 ok")
        else:
            self.reply("535 5.7.8 authentication credentials invalid")

    def do_AUTH(self, rest: str) -> None:
        mechanism, _, initial = rest.partition(" ")
        if mechanism.upper() == "PLAIN" and initial:
            _, user, password = base64.b64decode(initial).split(b"\0")
            self._check(user.decode(), password.decode())
        elif mechanism.upper() == "LOGIN":
            self.reply("334 VXNlcm5hbWU6")
            state: dict = {}

            def step(line: bytes) -> None:
                if "user" not in state:
                    state["user"] = base64.b64decode(line).decode()
                    self.reply("334 UGFzc3dvcmQ6")
                else:
                    self._check(state["user"], base64.b64decode(line).decode())

            self._authStep = step
        else:
            self.reply("504 5.5.4 unrecognized")

    def do_MAIL(self, rest: str) -> None:
        if self.login is None:
            self.reply("530 5.7.0 authentication required")
            return
        if self.config.size is not None and "SIZE=" in rest.upper():
            size = int(rest.upper().split("SIZE=")[1].split()[0])
            if size > self.config.size:
                self.reply("552 5.3.4 message too big")
                return
        self.sender = rest.split(":", 1)[1].split()[0].strip("<>")
        self.recipients = []
        self.reply("250 2.1.0 ok")

    def do_RCPT(self, rest: str) -> None:
        address = rest.split(":", 1)[1].strip().strip("<>")
        if address in self.config.refuse:
            self.reply(self.config.refuse[address])
        else:
            self.recipients.append(address)
            self.reply("250 2.1.5 ok")

    def do_DATA(self, rest: str) -> None:
        self.data = []
        self.reply("354 go ahead")

    def do_RSET(self, rest: str) -> None:
        self.reply("250 2.0.0 ok")

    def do_QUIT(self, rest: str) -> None:
        self.reply("221 2.0.0 bye")
        self.transport.loseConnection()


def certificate(testCase: unittest.TestCase, hostname: str = "localhost") -> tuple:
    directory = testCase.mktemp()
    os.makedirs(directory)
    return makeCertificate(directory, hostname)


def otherNameCertificate(testCase: unittest.TestCase, hostname: str) -> tuple:
    """
    A self-signed CA certificate naming only C{hostname} (unlike
    L{makeCertificate}, which always adds localhost and 127.0.0.1).
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = testCase.mktemp()
    os.makedirs(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certPath, keyPath = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(keyPath, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with open(certPath, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return certPath, keyPath


def listenTLS(testCase: unittest.TestCase, build, certPath: str, keyPath: str, implicit: bool) -> int:
    """Listen on 127.0.0.1 with a protocol from C{build()}; @return: the port."""
    from twisted.protocols.tls import TLSMemoryBIOFactory

    factory = Factory.forProtocol(build)
    if implicit:
        factory = TLSMemoryBIOFactory(serverContextFactory(certPath, keyPath), False, factory)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    testCase.addCleanup(port.stopListening)
    return port.getHost().port


def closedPort() -> int:
    """A 127.0.0.1 port nothing listens on."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class ScriptedServerMixin:
    def startSMTP(self, mode: TLSMode = TLSMode.starttls, hostname: str = "localhost", cert: Optional[tuple] = None, **configKw) -> tuple:
        certPath, keyPath = cert or certificate(self, hostname)
        config = FakeSMTPConfig(contextFactory=serverContextFactory(certPath, keyPath), implicit=mode is TLSMode.implicit, **configKw)
        port = listenTLS(self, lambda: FakeSMTPServer(config), certPath, keyPath, mode is TLSMode.implicit)
        endpoint = ServerEndpoint(host="localhost", port=port, tls=mode, cafile=certPath, timeout=5)
        return config, endpoint


# --- transcript tests -------------------------------------------------------


class WireDataTests(unittest.SynchronousTestCase):
    def test_dotStuffing(self) -> None:
        """RFC 5321 §4.5.2: a leading dot is doubled, on the first line too."""
        self.assertEqual(wireData(b".a\r\nb\r\n..c\r\n"), b"..a\r\nb\r\n...c\r\n")

    def test_bareLineEndingsNormalised(self) -> None:
        """
        SMTP smuggling: a bare LF or CR could let a lenient server see
        "<LF>.<LF>" as the end of data; every line ending becomes CRLF.
        """
        self.assertEqual(wireData(b"a\n.\nb\r.\rc"), b"a\r\n..\r\nb\r\n..\r\nc\r\n")

    def test_endsWithCRLF(self) -> None:
        self.assertEqual(wireData(b"x"), b"x\r\n")


class TranscriptTests(unittest.SynchronousTestCase):
    """
    The client against scripted server replies on a L{StringTransport}.
    """

    def setUp(self) -> None:
        self.lines: List[tuple] = []
        self.clock = Clock()

    def client(self, recipients=("bob@example.test",), mode=TLSMode.none, allowPlaintext=True, message=MESSAGE) -> SubmissionClient:
        endpoint = ServerEndpoint(host="mail.example.test", port=587, tls=mode, allowPlaintext=allowPlaintext, timeout=30)
        self.protocol = SubmissionClient(
            endpoint=endpoint,
            creator=None,
            username="alice@example.test",
            password="s3cret",
            sender="alice@example.test",
            recipients=list(recipients),
            message=message,
            transcript=lambda who, line: self.lines.append((who, line)),
            clock=self.clock,
        )
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.outcome: List[object] = []
        self.protocol.finished.addBoth(self.outcome.append)
        return self.protocol

    def server(self, *lines: bytes) -> bytes:
        """Feed server lines; @return: what the client sent meanwhile."""
        self.transport.clear()
        for line in lines:
            self.protocol.dataReceived(line + b"\r\n")
        # Let FileSender push the message body.
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()
        return self.transport.value()

    def login(self) -> None:
        self.assertEqual(self.server(b"220 hi"), b"EHLO localhost\r\n")
        sent = self.server(b"250-mail.example.test", b"250-SIZE 1000", b"250 AUTH PLAIN LOGIN")
        self.assertEqual(sent, b"AUTH PLAIN " + base64.b64encode(b"\0alice@example.test\0s3cret") + b"\r\n")

    def test_success(self) -> None:
        """
        EHLO, AUTH PLAIN with an initial response, MAIL with SIZE, RCPT,
        DATA, QUIT; the result has the per-recipient replies.
        """
        self.client(recipients=["bob@example.test", "carol@example.test"])
        self.login()
        size = len(wireData(MESSAGE))
        self.assertEqual(self.server(b"235 2.7.0 ok"), b"MAIL FROM:<alice@example.test> SIZE=%d\r\n" % (size,))
        self.assertEqual(self.server(b"250 ok"), b"RCPT TO:<bob@example.test>\r\n")
        self.assertEqual(self.server(b"250 2.1.5 ok bob"), b"RCPT TO:<carol@example.test>\r\n")
        self.assertEqual(self.server(b"250 2.1.5 ok carol"), b"DATA\r\n")
        self.assertEqual(self.server(b"354 go"), wireData(MESSAGE) + b".\r\n")
        self.assertEqual(self.server(b"250 2.0.0 queued"), b"RSET\r\n")
        self.assertEqual(self.server(b"250 ok"), b"QUIT\r\n")
        self.server(b"221 bye")
        self.assertTrue(self.transport.disconnecting)
        self.protocol.connectionLost(None)
        [result] = self.outcome
        self.assertIsInstance(result, SendResult)
        self.assertEqual(
            result.recipients,
            (RecipientResult("bob@example.test", 250, "2.1.5 ok bob"), RecipientResult("carol@example.test", 250, "2.1.5 ok carol")),
        )
        self.assertEqual((result.code, result.text), (250, "2.0.0 queued"))

    def test_partialRefusal(self) -> None:
        """One refused recipient does not hide the other's success."""
        self.client(recipients=["bob@example.test", "nobody@example.test"])
        self.login()
        self.server(b"235 ok", b"250 ok", b"250 ok bob")
        self.assertEqual(self.server(b"550 5.1.1 no such user"), b"DATA\r\n")
        self.server(b"354 go", b"250 queued", b"250 ok", b"221 bye")
        self.protocol.connectionLost(None)
        [result] = self.outcome
        self.assertEqual([r.address for r in result.accepted], ["bob@example.test"])
        self.assertEqual(result.refused, [RecipientResult("nobody@example.test", 550, "5.1.1 no such user")])

    def test_allRefused(self) -> None:
        """Every recipient refused: L{RecipientsRefused} with the server's replies."""
        self.client(recipients=["x@example.test"])
        self.login()
        self.server(b"235 ok", b"250 ok")
        self.assertEqual(self.server(b"550 5.1.1 no such user"), b"RSET\r\n")
        self.server(b"250 ok", b"221 bye")
        self.protocol.connectionLost(None)
        failure = self.outcome[0]
        failure.trap(RecipientsRefused)
        self.assertIn("550 5.1.1 no such user", str(failure.value))
        self.assertEqual(failure.value.results, (RecipientResult("x@example.test", 550, "5.1.1 no such user"),))

    def test_sizeAdvertisedTooSmall(self) -> None:
        """RFC 1870 §6: over the advertised SIZE, the client does not send."""
        self.client(message=b"x" * 2000)
        self.login()
        self.assertEqual(self.server(b"235 ok"), b"QUIT\r\n")
        self.server(b"221 bye")
        self.protocol.connectionLost(None)
        self.outcome[0].trap(MessageTooLarge)

    def test_dataRefused552(self) -> None:
        self.client()
        self.login()
        self.server(b"235 ok", b"250 ok", b"250 ok", b"354 go")
        self.server(b"552 5.3.4 too big")
        self.server(b"250 ok", b"221 bye")
        self.protocol.connectionLost(None)
        self.outcome[0].trap(MessageTooLarge)
        self.assertIn("552 5.3.4 too big", str(self.outcome[0].value))

    def test_authFailure(self) -> None:
        """A 535 is L{AuthenticationFailed}, after one attempt only."""
        self.client()
        self.login()
        self.assertEqual(self.server(b"535 5.7.8 bad credentials"), b"QUIT\r\n")
        self.server(b"221 bye")
        self.protocol.connectionLost(None)
        self.outcome[0].trap(AuthenticationFailed)
        self.assertIn("535 5.7.8 bad credentials", str(self.outcome[0].value))

    def test_loginMechanismAndMasking(self) -> None:
        """
        AUTH LOGIN when PLAIN is not offered; the transcript shows neither
        the user name nor the password.
        """
        self.client()
        self.server(b"220 hi")
        self.assertEqual(self.server(b"250-x", b"250 AUTH LOGIN"), b"AUTH LOGIN\r\n")
        self.assertEqual(self.server(b"334 VXNlcm5hbWU6"), base64.b64encode(b"alice@example.test") + b"\r\n")
        self.assertEqual(self.server(b"334 UGFzc3dvcmQ6"), base64.b64encode(b"s3cret") + b"\r\n")
        self.assertEqual(self.server(b"235 ok"), b"MAIL FROM:<alice@example.test>\r\n")
        text = "\n".join(line for _, line in self.lines)
        self.assertNotIn(base64.b64encode(b"s3cret").decode(), text)
        self.assertNotIn(base64.b64encode(b"alice@example.test").decode(), text)
        self.assertIn(("C", "AUTH LOGIN ****"), self.lines)
        self.assertIn(("S", "220 hi"), self.lines)

    def test_plainMasked(self) -> None:
        self.client()
        self.login()
        self.assertIn(("C", "AUTH PLAIN ****"), self.lines)
        self.assertNotIn(base64.b64encode(b"\0alice@example.test\0s3cret").decode(), str(self.lines))

    def test_noPlaintextPassword(self) -> None:
        """Without TLS and without allowPlaintext, no password is sent."""
        self.client(allowPlaintext=False)
        self.server(b"220 hi")
        self.assertEqual(self.server(b"250-x", b"250 AUTH PLAIN"), b"QUIT\r\n")
        self.server(b"221 bye")
        self.protocol.connectionLost(None)
        self.outcome[0].trap(PlaintextRefused)

    def test_startTLSRequired(self) -> None:
        """RFC 3207 §4: in starttls mode a server without STARTTLS is an error."""
        self.client(mode=TLSMode.starttls)
        self.server(b"220 hi")
        self.assertEqual(self.server(b"250-x", b"250 AUTH PLAIN"), b"QUIT\r\n")
        self.server(b"221 bye")
        self.protocol.connectionLost(None)
        self.outcome[0].trap(TLSUnavailable)

    def test_timeout(self) -> None:
        """No reply within the timeout: L{ServerTimeout}."""
        self.client()
        self.server(b"220 hi")
        self.clock.advance(31)
        self.assertTrue(self.transport.disconnecting)
        self.protocol.connectionLost(None)
        self.outcome[0].trap(ServerTimeout)

    def test_dataTerminationTimeout(self) -> None:
        """
        RFC 5321 §4.5.3.2.6: the reply to the end of data may take up to
        10 minutes (the server fsyncs); the short timeout does not apply.
        """
        self.client()
        self.login()
        self.server(b"235 ok", b"250 ok", b"250 ok", b"354 go")
        self.clock.advance(500)
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.server(b"250 queued"), b"RSET\r\n")
        # Back to the short timeout for the rest.
        self.clock.advance(31)
        self.assertTrue(self.transport.disconnecting)

    def test_mailFromRefused(self) -> None:
        self.client()
        self.login()
        self.server(b"235 ok")
        self.server(b"553 5.7.1 not your address", b"250 ok", b"221 bye")
        self.protocol.connectionLost(None)
        self.outcome[0].trap(ServerError)
        self.assertIn("MAIL FROM", str(self.outcome[0].value))


    def test_startTLSInjectedReplyRefused(self) -> None:
        """
        STARTTLS response injection: lines sent in plaintext right after
        "220" (by the server or a man in the middle) are not read as
        replies from inside TLS.
        """
        self.client(mode=TLSMode.starttls)
        self.protocol.context = object()  # any creator: STARTTLS is attempted
        started: list = []
        self.transport.startTLS = started.append  # type: ignore[attr-defined]
        self.server(b"220 hi")
        self.assertEqual(self.server(b"250-x", b"250-STARTTLS", b"250 AUTH PLAIN"), b"STARTTLS\r\n")
        self.transport.clear()
        self.protocol.dataReceived(b"220 go ahead\r\n250-x\r\n250 AUTH PLAIN\r\n")
        self.assertEqual(started, [])
        self.assertEqual(self.transport.value(), b"")
        self.assertTrue(self.transport.disconnecting)
        self.protocol.connectionLost(None)
        self.outcome[0].trap(TLSFailed)
        self.assertIn("unencrypted data after its STARTTLS reply", str(self.outcome[0].value))


class TLSSettingsTests(unittest.TestCase):
    def test_defaultPorts(self) -> None:
        self.assertEqual(DEFAULT_PORTS[("smtp", TLSMode.starttls)], 587)
        self.assertEqual(DEFAULT_PORTS[("smtp", TLSMode.implicit)], 465)
        self.assertEqual(DEFAULT_PORTS[("pop3", TLSMode.starttls)], 110)
        self.assertEqual(DEFAULT_PORTS[("pop3", TLSMode.implicit)], 995)

    def test_badCAFile(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a certificate")
        self.assertRaises(ConfigError, loadTrustRoot, path)
        self.assertRaises(ConfigError, loadTrustRoot, path + ".missing")

    def test_unknownReasonPassesThrough(self) -> None:
        endpoint = ServerEndpoint(host="h", port=1)
        error = KeyError("x")
        self.assertIs(clientError(error, endpoint), error)


# --- over real sockets ------------------------------------------------------


class LoopbackTests(ScriptedServerMixin, unittest.TestCase):
    """L{sendMessage} against the scripted server on 127.0.0.1."""

    def send(self, endpoint: ServerEndpoint, recipients=("bob@example.test",), password="secret", transcript=None) -> defer.Deferred:
        return sendMessage(
            reactor, endpoint, ("alice@example.test", password), "alice@example.test", list(recipients), MESSAGE, transcript=transcript
        )

    @defer.inlineCallbacks
    def test_startTLS(self):
        """STARTTLS, certificate verified against --cafile, then AUTH and the message."""
        config, endpoint = self.startSMTP(TLSMode.starttls)
        lines: List[tuple] = []
        result = yield self.send(endpoint, transcript=lambda *l: lines.append(l))
        self.assertEqual([r.address for r in result.accepted], ["bob@example.test"])
        [(sender, recipients, data)] = config.messages
        self.assertEqual((sender, recipients, data), ("alice@example.test", ["bob@example.test"], MESSAGE))
        self.assertIn(b"STARTTLS", config.lines)
        self.assertLess(config.lines.index(b"STARTTLS"), min(i for i, l in enumerate(config.lines) if l.startswith(b"AUTH")))
        self.assertIn(("C", "STARTTLS"), lines)

    @defer.inlineCallbacks
    def test_implicitTLS(self):
        config, endpoint = self.startSMTP(TLSMode.implicit)
        result = yield self.send(endpoint)
        self.assertEqual(len(result.accepted), 1)
        self.assertNotIn(b"STARTTLS", config.lines)

    @defer.inlineCallbacks
    def test_wrongNameCertificate(self):
        """
        A trusted certificate for another name: L{TLSFailed} saying which
        name was expected and which certificate was shown; no AUTH sent.
        """
        cert, key = otherNameCertificate(self, "other.example.test")
        config = FakeSMTPConfig(contextFactory=serverContextFactory(cert, key), implicit=True)
        port = listenTLS(self, lambda: FakeSMTPServer(config), cert, key, True)
        endpoint = ServerEndpoint(host="127.0.0.1", port=port, tls=TLSMode.implicit, cafile=cert, timeout=5)
        with self.assertRaises(TLSFailed) as caught:
            yield self.send(endpoint)
        message = str(caught.exception)
        self.assertIn("not valid for the name 127.0.0.1", message)
        self.assertIn("other.example.test", message)
        self.assertFalse(any(l.startswith(b"AUTH") for l in config.lines))

    @defer.inlineCallbacks
    def test_untrustedCertificate(self):
        """Without the CA, a self-signed certificate is not trusted: L{TLSFailed}."""
        config, endpoint = self.startSMTP(TLSMode.starttls)
        otherCert, _ = certificate(self, "elsewhere.example.test")
        endpoint = attr.evolve(endpoint, cafile=otherCert)
        with self.assertRaises(TLSFailed) as caught:
            yield self.send(endpoint)
        self.assertIn("localhost", str(caught.exception))
        self.assertIn("SHA-256", str(caught.exception))
        self.assertFalse(any(l.startswith(b"AUTH") for l in config.lines))

    @defer.inlineCallbacks
    def test_insecure(self):
        """--insecure: an untrusted certificate is accepted (still TLS)."""
        config, endpoint = self.startSMTP(TLSMode.starttls)
        endpoint = attr.evolve(endpoint, cafile=None, insecure=True)
        result = yield self.send(endpoint)
        self.assertEqual(len(result.accepted), 1)

    @defer.inlineCallbacks
    def test_noStartTLSOffered(self):
        config, endpoint = self.startSMTP(TLSMode.starttls, offerStartTLS=False)
        with self.assertRaises(TLSUnavailable):
            yield self.send(endpoint)
        self.assertFalse(any(l.startswith(b"AUTH") for l in config.lines))

    @defer.inlineCallbacks
    def test_authFailure(self):
        config, endpoint = self.startSMTP()
        with self.assertRaises(AuthenticationFailed) as caught:
            yield self.send(endpoint, password="wrong")
        self.assertIn("535", str(caught.exception))

    @defer.inlineCallbacks
    def test_recipientRefused(self):
        config, endpoint = self.startSMTP(refuse={"eve@example.test": "550 5.1.1 <eve@example.test>: no such user"})
        result = yield self.send(endpoint, recipients=["bob@example.test", "eve@example.test"])
        self.assertEqual([r.address for r in result.refused], ["eve@example.test"])
        self.assertEqual(config.messages[0][1], ["bob@example.test"])

    @defer.inlineCallbacks
    def test_connectionRefused(self):
        endpoint = ServerEndpoint(host="127.0.0.1", port=closedPort(), tls=TLSMode.none, allowPlaintext=True)
        with self.assertRaises(ConnectFailed) as caught:
            yield self.send(endpoint)
        self.assertIn("connection refused", str(caught.exception))

    @defer.inlineCallbacks
    def test_nameNotFound(self):
        endpoint = ServerEndpoint(host="no-such-host.invalid", port=587, tls=TLSMode.none, allowPlaintext=True, timeout=5)
        with self.assertRaises(ConnectFailed) as caught:
            yield self.send(endpoint)
        self.assertIn("not found", str(caught.exception))


class WrongPortTests(unittest.SynchronousTestCase):
    """
    A wrong port or a wrong TLS mode is named, with the fix (issue 15
    item 8), instead of a long wait or a misleading message.
    """

    setUp = TranscriptTests.setUp
    client = TranscriptTests.client
    server = TranscriptTests.server

    def test_silentServerIsProbablyImplicitTLS(self) -> None:
        """STARTTLS against an implicit-TLS port: the server waits for our
        TLS hello and says nothing; we say so after 15 s, not 60."""
        from mailnet.errors import NoGreeting

        self.client(mode=TLSMode.starttls)
        self.clock.advance(14)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1.5)
        self.assertTrue(self.transport.disconnecting)
        self.protocol.connectionLost(None)
        error = self.outcome[0].trap(NoGreeting) and self.outcome[0].value
        self.assertIn("--tls implicit", str(error))

    def test_greetedThenNormalTimeout(self) -> None:
        """After the greeting, the normal reply timeout applies."""
        self.client()
        self.server(b"220 hi")
        self.clock.advance(20)
        self.assertFalse(self.transport.disconnecting)

    def test_pop3Port(self) -> None:
        """SMTP against a POP3 port."""
        from mailnet.errors import WrongService

        self.client()
        self.server(b"+OK POP3 ready \x1b[2J")
        self.protocol.connectionLost(None)
        self.outcome[0].trap(WrongService)
        message = str(self.outcome[0].value)
        self.assertIn("is a POP3 server, not an SMTP submission server", message)
        self.assertIn("--smtp-port", message)
        self.assertIn("\\x1b", message)  # escaped, never raw to the terminal
        self.assertNotIn("\x1b", message)


class PlaintextAnswerTests(unittest.TestCase):
    """Implicit TLS against a STARTTLS port: the reply is plaintext."""

    @defer.inlineCallbacks
    def test_implicitAgainstStartTLSPort(self) -> None:
        from twisted.internet import protocol, reactor

        class Greeter(protocol.Protocol):
            def connectionMade(self) -> None:
                self.transport.write(b"220 mail.example.test ESMTP\r\n")

        port = reactor.listenTCP(0, protocol.Factory.forProtocol(Greeter), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        cert = certificate(self)
        endpoint = ServerEndpoint(host="localhost", port=port.getHost().port, tls=TLSMode.implicit, cafile=cert[0], timeout=5)
        failure = yield self.assertFailure(
            sendMessage(reactor, endpoint, ("a@example.test", "x"), "a@example.test", ["b@example.test"], b"x\r\n"), TLSFailed
        )
        self.assertIn("answered in plaintext", str(failure))
        self.assertIn("--tls starttls", str(failure))
