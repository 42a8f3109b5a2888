# -*- test-case-name: tests.test_client_smtp -*-
"""
Submitting mail (RFC 6409) with Twisted's ESMTP client.

L{sendMessage} connects, secures the connection (STARTTLS, RFC 3207, or
implicit TLS, RFC 8314), authenticates (RFC 4954: PLAIN, else LOGIN),
sends one message to every recipient it can, and reports what the server
answered for each recipient.  One refused recipient does not stop the
others; the caller decides what a partial success means.

The protocol is L{SubmissionClient}, a subclass of
L{twisted.mail.smtp.ESMTPClient} that adds what the stock sender lacks: a
single Deferred with per-recipient results, SIZE (RFC 1870), refusing to
send a password in the clear, correct dot-stuffing, and a transcript with
credentials masked.
"""

import base64
import re
from typing import Any, Callable, List, Optional, Sequence, Tuple

import attr
from twisted.internet import defer
from twisted.internet.protocol import ClientFactory
from twisted.mail import smtp
from twisted.python.failure import Failure

from mailnet.client.tls import (
    ServerEndpoint,
    TLSMode,
    Transcript,
    VerifyingCreator,
    clientError,
    noGreeting,
    wrongService,
)
from mailnet.errors import (
    AuthenticationFailed,
    ClientError,
    MessageTooLarge,
    PlaintextRefused,
    RecipientsRefused,
    ServerError,
    ServerTimeout,
    TLSFailed,
    TLSUnavailable,
)

_SUCCESS = range(200, 300)

#: Seconds to wait for the reply to the end of DATA (RFC 5321 §4.5.3.2.6).
DATA_TERMINATION_TIMEOUT = 600.0


@attr.s(frozen=True, auto_attribs=True)
class RecipientResult:
    """
    What the server answered to C{RCPT TO} for one recipient.
    """

    address: str
    code: int
    text: str

    @property
    def accepted(self) -> bool:
        return self.code in _SUCCESS


@attr.s(frozen=True, auto_attribs=True)
class SendResult:
    """
    The outcome of a submission where the server took the message for at
    least one recipient.

    @ivar recipients: one L{RecipientResult} per envelope recipient, in order.
    @ivar code: the reply to the end of DATA.
    @ivar text: its text.
    """

    recipients: Tuple[RecipientResult, ...]
    code: int
    text: str

    @property
    def accepted(self) -> List[RecipientResult]:
        return [r for r in self.recipients if r.accepted]

    @property
    def refused(self) -> List[RecipientResult]:
        return [r for r in self.recipients if not r.accepted]


def wireData(message: bytes) -> bytes:
    """
    Make message bytes safe for DATA: every line ending CRLF (bare CR and
    LF too, so nothing can look like an end of data to a lenient server:
    SMTP smuggling), dot-stuffed (RFC 5321 §4.5.2), ending in CRLF.
    """
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..")


def humanSize(octets: int) -> str:
    """C{octets} for a person: C{512 B}, C{14.2 KiB}, C{25.0 MiB}."""
    if octets < 1024:
        return "%d B" % (octets,)
    if octets < 1024 * 1024:
        return "%.1f KiB" % (octets / 1024,)
    if octets < 1024 * 1024 * 1024:
        return "%.1f MiB" % (octets / 1024 / 1024,)
    return "%.1f GiB" % (octets / 1024 / 1024 / 1024,)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _reply(code: int, resp: Any) -> str:
    return ("%03d %s" % (code, _text(resp).replace("\n", " "))).strip()


class _PlainAuthenticator:
    """
    SASL PLAIN (RFC 4616) with an empty authorization identity, sent as an
    initial response (RFC 4954 §4).
    """

    def __init__(self, user: bytes) -> None:
        self.user = user

    def getName(self) -> bytes:
        return b"PLAIN"

    def challengeResponse(self, secret: bytes, chal: Any = None) -> bytes:
        return b"\0" + self.user + b"\0" + secret


class SubmissionClient(smtp.ESMTPClient):
    """
    Sends one message and fires L{finished} with a L{SendResult}, or fails
    it with a L{mailnet.errors.ClientError}.

    @ivar finished: the Deferred for the outcome, fired once the connection
        is closed (after QUIT when the server allows it).
    """

    heloFallback = False

    def __init__(
        self,
        *,
        endpoint: ServerEndpoint,
        creator: Optional[VerifyingCreator],
        username: Optional[str],
        password: Optional[str],
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        identity: str = "localhost",
        transcript: Optional[Transcript] = None,
        clock: Any = None,
        progress: Optional[Callable[[int], None]] = None,
    ) -> None:
        secret = password.encode("utf-8") if password is not None else None
        smtp.ESMTPClient.__init__(self, secret, creator, identity)
        self.endpoint = endpoint
        self.creator = creator
        self.username = username
        self.sender = sender
        self.recipients = list(recipients)
        self.data = wireData(message)
        self.transcript = transcript
        self.progress = progress
        self.finished: defer.Deferred = defer.Deferred()
        self.timeout = endpoint.timeout  # type: ignore[assignment]
        if clock is not None:
            self.callLater = clock.callLater  # type: ignore[method-assign]  # TimeoutMixin's clock
        self.requireTransportSecurity = endpoint.tls is not TLSMode.none
        self.requireAuthentication = username is not None
        self._sent = False
        self._lost = False
        self._outcome: Any = None
        self._masking = False
        self._extensions: dict = {}
        self._greeting: Optional[bytes] = None
        if username is not None:
            user = username.encode("utf-8")
            self.registerAuthenticator(_PlainAuthenticator(user))
            self.registerAuthenticator(smtp.LOGINAuthenticator(user))

    # -- transcript ------------------------------------------------------

    def sendLine(self, line: bytes) -> None:
        if self.transcript is not None:
            shown = _text(line)
            if self._masking or line.upper().startswith(b"AUTH "):
                # Only the mechanism name is shown, never the credentials.
                shown = " ".join(shown.split()[:2]) + " ****" if line.upper().startswith(b"AUTH ") else "****"
            self.transcript("C", shown)
        smtp.ESMTPClient.sendLine(self, line)

    def lineReceived(self, line: bytes) -> Any:
        if self.transcript is not None:
            self.transcript("S", _text(line))
        if self._greeting is None:
            self._greeting = line
            self.setTimeout(self.endpoint.timeout)
        return smtp.ESMTPClient.lineReceived(self, line)

    def connectionMade(self) -> None:
        smtp.ESMTPClient.connectionMade(self)
        # Silence from a port we greet in the clear: probably implicit TLS.
        self.setTimeout(self.endpoint.firstTimeout)

    # -- the conversation ------------------------------------------------

    def esmtpState_serverConfig(self, code: int, resp: bytes) -> None:
        self._extensions = {}
        for line in resp.splitlines():
            words = line.split(None, 1)
            if words:
                self._extensions[words[0].upper()] = words[1] if len(words) > 1 else None
        smtp.ESMTPClient.esmtpState_serverConfig(self, code, resp)

    def esmtpTLSRequired(self, code: int = -1, resp: Any = None) -> None:
        # RFC 3207 §4: a client that wants TLS must not fall back.
        self._fail(TLSUnavailable(host=self.endpoint.host, port=self.endpoint.port, command="STARTTLS"))

    def esmtpTLSFailed(self, code: int = -1, resp: Any = None) -> None:
        self._fail(TLSFailed(host=self.endpoint.host, port=self.endpoint.port, reason="STARTTLS refused: %s" % (_reply(code, resp),)))

    def esmtpState_starttls(self, code: int, resp: bytes) -> None:
        # RFC 3207 §4 and "response injection" (CVE-2011-0411 turned
        # around): bytes that follow the 220 arrived in plaintext and must
        # not be read as answers from inside TLS.
        if self.clearLineBuffer():
            self._fail(
                TLSFailed(
                    host=self.endpoint.host,
                    port=self.endpoint.port,
                    reason="the server sent unencrypted data after its STARTTLS reply (an injection attempt?)",
                )
            )
            self._okresponse = self._failresponse = lambda code, resp: None
            return
        smtp.ESMTPClient.esmtpState_starttls(self, code, resp)

    def authenticate(self, code: int, resp: bytes, items: dict) -> None:
        if self.username is None:
            self.smtpState_from(code, resp)
            return
        if not self._tlsMode and not self.endpoint.allowPlaintext:
            self._fail(PlaintextRefused(host=self.endpoint.host, user=self.username))
            return
        offered = {m.upper() for m in (items.get(b"AUTH") or b"").split()}
        for authenticator in self.authenticators:
            name = authenticator.getName().upper()
            if name not in offered:
                continue
            self._authinfo = authenticator
            self._failresponse = self.esmtpAUTHDeclined
            self._masking = True
            if name == b"PLAIN":
                # RFC 4954 §4: the initial response saves a round trip.
                self._expected = [235]
                self._okresponse = self._authenticated
                response = base64.b64encode(authenticator.challengeResponse(self.secret))
                self.sendLine(b"AUTH PLAIN " + response)
            else:
                self._expected = [334]
                self._okresponse = self.esmtpState_challenge
                self.sendLine(b"AUTH " + name)
            return
        self._fail(
            AuthenticationFailed(
                host=self.endpoint.host,
                user=self.username,
                reply="the server offers no login method we know (%s)" % (_text(items.get(b"AUTH") or b"none"),),
            )
        )

    def smtpState_maybeAuthenticated(self, code: int, resp: bytes) -> None:
        if code == 235:
            self._authenticated(code, resp)
        else:
            smtp.ESMTPClient.smtpState_maybeAuthenticated(self, code, resp)

    def _authenticated(self, code: int, resp: bytes) -> None:
        self._masking = False
        self._authinfo = None
        self.smtpState_from(code, resp)

    def esmtpAUTHDeclined(self, code: int = -1, resp: Any = None) -> None:
        self._masking = False
        self._fail(AuthenticationFailed(host=self.endpoint.host, user=self.username, reply=_reply(code, resp)))

    esmtpAUTHServerError = esmtpAUTHDeclined
    esmtpAUTHMalformedChallenge = esmtpAUTHDeclined

    def smtpState_from(self, code: int, resp: bytes) -> None:
        self._failresponse = self.smtpTransferFailed
        if self._sent:
            self._disconnectFromServer()
            return
        self._sent = True
        self._from = self.sender
        size = len(self.data)
        command = b"MAIL FROM:" + smtp.quoteaddr(self.sender)
        if b"SIZE" in self._extensions:
            # RFC 1870 §6: declare the size, and do not even try when the
            # server has said it takes less.
            limit = self._extensions[b"SIZE"]
            if limit and limit.isdigit() and 0 < int(limit) < size:
                self._fail(
                    MessageTooLarge(
                        host=self.endpoint.host,
                        size=humanSize(size),
                        reply="the server accepts at most %s" % (humanSize(int(limit)),),
                    )
                )
                return
            command += b" SIZE=%d" % (size,)
        self.sendLine(command)
        self._expected = [250]
        self._okresponse = self.smtpState_to

    def getMailTo(self) -> List[str]:
        return self.recipients

    def getMailData(self) -> Any:
        from io import BytesIO

        return BytesIO(self.data)

    def transformChunk(self, chunk: bytes) -> bytes:
        # wireData already made the bytes wire-ready; the stock transform
        # would double CRs and misses dots at chunk boundaries.
        self.resetTimeout()
        if self.progress is not None:
            self.progress(len(chunk))
        return chunk

    def finishedFileTransfer(self, lastsent: bytes) -> None:
        # RFC 5321 §4.5.3.2.6: the server may take its time making the
        # message durable; wait up to 10 minutes for the reply to the end
        # of data (not the short per-command timeout).
        self.setTimeout(max(self.endpoint.timeout, DATA_TERMINATION_TIMEOUT))
        smtp.ESMTPClient.finishedFileTransfer(self, lastsent)

    def smtpState_msgSent(self, code: int, resp: Any) -> None:
        self.setTimeout(self.endpoint.timeout)
        smtp.ESMTPClient.smtpState_msgSent(self, code, resp)

    def sentMail(self, code: int, resp: Any, numOk: int, addresses: Sequence, log: Any) -> None:
        results = tuple(RecipientResult(_text(a), c, _text(r).replace("\n", " ")) for a, c, r in addresses)
        host = self.endpoint.host
        if code in _SUCCESS and numOk:
            self._succeed(SendResult(results, code, _text(resp)))
        elif not results:
            # MAIL FROM was refused.
            if code == 552:
                self._fail(MessageTooLarge(host=host, size=humanSize(len(self.data)), reply=_reply(code, resp)), quit=False)
            else:
                self._fail(ServerError(host=host, command="MAIL FROM", reply=_reply(code, resp)), quit=False)
        elif not numOk:
            error = RecipientsRefused(
                host=host, refused=", ".join("%s (%s)" % (r.address, _reply(r.code, r.text)) for r in results)
            )
            error.results = results  # type: ignore[attr-defined]
            self._fail(error, quit=False)
        elif code == 552:
            self._fail(MessageTooLarge(host=host, size=humanSize(len(self.data)), reply=_reply(code, resp)), quit=False)
        else:
            self._fail(ServerError(host=host, command="DATA", reply=_reply(code, resp)), quit=False)

    def sendError(self, exc: Any) -> None:
        if self._greeting is None and isinstance(exc, smtp.SMTPTimeoutError):
            self._fail(noGreeting(self.endpoint, self.endpoint.firstTimeout))
            return
        wrong = wrongService(self.endpoint, "smtp", self._greeting) if self._greeting is not None else None
        if wrong is not None and isinstance(exc, smtp.SMTPClientError) and not self._sent:
            self._fail(wrong)
            return
        if isinstance(exc, smtp.SMTPTimeoutError):
            self._fail(ServerTimeout(host=self.endpoint.host, port=self.endpoint.port, seconds="%g" % (self.endpoint.timeout,)))
        elif isinstance(exc, smtp.SMTPConnectError):
            self._fail(ServerError(host=self.endpoint.host, command="the connection", reply=_reply(exc.code, exc.resp)))
        elif isinstance(exc, smtp.SMTPClientError):
            self._fail(ServerError(host=self.endpoint.host, command="the session", reply=_reply(exc.code, exc.resp)))
        else:
            self._fail(exc)

    def _fail(self, error: BaseException, quit: bool = True) -> None:
        """
        Record the failure and end the session: politely (QUIT) after an
        answer the server gave, by closing when the conversation itself
        broke.  C{quit=False}: the stock state machine is about to RSET and
        QUIT by itself.  L{finished} fires when the connection is closed.
        """
        if self._outcome is None:
            self._outcome = Failure(error)
        if self._lost or not quit:
            return
        if not isinstance(error, ClientError) or isinstance(error, (ServerTimeout, TLSFailed)):
            assert self.transport is not None
            self.transport.loseConnection()
        else:
            self._disconnectFromServer()

    def _succeed(self, result: SendResult) -> None:
        if self._outcome is None:
            self._outcome = result

    def connectionLost(self, reason: Any = None) -> None:
        self._lost = True
        smtp.ESMTPClient.connectionLost(self, reason)
        outcome = self._outcome
        if outcome is None:
            outcome = Failure(clientError(reason, self.endpoint, self.creator))
        if isinstance(outcome, Failure):
            self.finished.errback(outcome)
        else:
            self.finished.callback(outcome)


class _SubmissionFactory(ClientFactory):
    def __init__(self, build: Any) -> None:
        self._build = build

    def buildProtocol(self, addr: Any) -> SubmissionClient:
        protocol = self._build()
        protocol.factory = self
        return protocol


def sendMessage(
    reactor: Any,
    endpoint: ServerEndpoint,
    credentials: Optional[Tuple[str, str]],
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    *,
    transcript: Optional[Transcript] = None,
    identity: str = "localhost",
    progress: Optional[Callable[[int], None]] = None,
) -> defer.Deferred:
    """
    Submit one message.

    @param endpoint: where, and with what TLS.
    @param credentials: C{(username, password)}, or L{None} not to log in.
    @param sender: the envelope sender (MAIL FROM).
    @param recipients: the envelope recipients (To, Cc and Bcc).
    @param message: the message (LF or CRLF line endings, not dot-stuffed).
    @param transcript: called with C{("C"|"S", line)} for each protocol
        line; credentials are masked.
    @param progress: called with the number of octets of each piece of
        the message as it is sent (for a progress bar); the whole is
        C{len(wireData(message))}.
    @return: a Deferred firing with a L{SendResult} when the server took the
        message for at least one recipient, or failing with a
        L{mailnet.errors.ClientError}: L{ConnectFailed}, L{ServerTimeout},
        L{TLSFailed}, L{TLSUnavailable}, L{PlaintextRefused},
        L{AuthenticationFailed}, L{RecipientsRefused} (every recipient
        refused; C{.results} has the replies), L{MessageTooLarge},
        L{ServerError}.
    """
    try:
        creator = endpoint.creator()
    except Exception as e:
        return defer.fail(e)
    username, password = credentials if credentials is not None else (None, None)

    def build() -> SubmissionClient:
        return SubmissionClient(
            endpoint=endpoint,
            creator=creator,
            username=username,
            password=password,
            sender=sender,
            recipients=recipients,
            message=message,
            identity=identity,
            transcript=transcript,
            clock=reactor,
            progress=progress,
        )

    connecting = endpoint.endpoint(reactor, creator).connect(_SubmissionFactory(build))

    def connected(protocol: SubmissionClient) -> defer.Deferred:
        return protocol.finished

    def failed(reason: Failure) -> Failure:
        return Failure(clientError(reason, endpoint, creator))

    connecting.addCallbacks(connected, failed)
    return connecting
