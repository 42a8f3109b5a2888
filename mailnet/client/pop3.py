# -*- test-case-name: tests.test_client_pop3 -*-
"""
Reading a mailbox over POP3 (RFC 1939) with Twisted's POP3 client.

L{POP3Session.connect} connects, secures the connection (STLS, RFC 2595
§4, or implicit TLS, RFC 8314) and returns a session whose methods each
return a Deferred: L{POP3Session.login}, L{POP3Session.stat},
L{POP3Session.list}, L{POP3Session.uidl}, L{POP3Session.top},
L{POP3Session.retrieve}, L{POP3Session.delete}, L{POP3Session.quit}.

Message numbers are 1-based, as in POP3 itself.  Deletions take effect
only when L{POP3Session.quit} succeeds (RFC 1939 §6, the UPDATE state).
Failures are L{mailnet.errors.ClientError}s.
"""

from typing import Any, Callable, List, Optional

from twisted.internet import defer
from twisted.internet.protocol import ClientFactory
from twisted.mail.pop3 import AdvancedPOP3Client as POP3Client
from twisted.mail.pop3 import ServerErrorResponse, TLSNotSupportedError
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
    NoSuchMessage,
    PlaintextRefused,
    ServerError,
    TLSFailed,
    TLSUnavailable,
)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, ServerErrorResponse):
        return _text(value.args[0]) if value.args else "-ERR"
    return str(value)


class _POP3Protocol(POP3Client):
    """
    Twisted's POP3 client, plus: a Deferred for the greeting, one for the
    end of the connection, a transcript with the password masked, and an
    injectable clock for the reply timeout.
    """

    allowInsecureLogin = False

    def __init__(
        self,
        timeout: float,
        transcript: Optional[Transcript],
        clock: Any,
        host: str = "the server",
        port: int = 0,
        endpoint: Optional[ServerEndpoint] = None,
    ) -> None:
        self.host = host
        self.port = port
        self.endpoint = endpoint
        self.timeout = timeout  # type: ignore[assignment]
        self.firstLine: Optional[bytes] = None
        #: Called with the octets of each line received (a progress bar).
        self.onBytes: Optional[Callable[[int], None]] = None
        self.transcript = transcript
        if clock is not None:
            self.callLater = clock.callLater  # type: ignore[method-assign]  # TimeoutMixin's clock
        self.greeted: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()
        self.secure = False
        self._tlsJustStarted = False
        self._injected = False

    def sendLine(self, line: bytes) -> None:
        if self.transcript is not None:
            shown = line.decode("utf-8", "replace")
            verb = shown.split(" ", 1)[0].upper()
            if verb in ("PASS", "APOP", "AUTH"):
                shown = verb + " ****"
            self.transcript("C", shown)
        POP3Client.sendLine(self, line)

    def connectionMade(self) -> None:
        POP3Client.connectionMade(self)
        if self.endpoint is not None:
            # Silence from a port we greet in the clear: probably implicit TLS.
            self.setTimeout(self.endpoint.firstTimeout)

    def dataReceived(self, data: bytes) -> None:
        POP3Client.dataReceived(self, data)
        # Whatever arrives from now on came through TLS.
        self._tlsJustStarted = False

    def _startedTLS(self, result: Any, context: Any, tls: Any) -> Any:
        if self._buffer:
            self._injection()
        self._tlsJustStarted = True
        return POP3Client._startedTLS(self, result, context, tls)

    def _injection(self) -> None:
        # RFC 2595 §4: a line after "+OK" to STLS, in the same plaintext
        # read, is an injection attempt; never take it as an answer.
        self._injected = True
        self._buffer = b""
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def lineReceived(self, line: bytes) -> None:
        if self._injected:
            return
        if self._tlsJustStarted:
            self._injection()
            return
        if self.transcript is not None:
            self.transcript("S", line.decode("utf-8", "replace"))
        if self.onBytes is not None:
            self.onBytes(len(line) + 2)
        if self.firstLine is None:
            self.firstLine = line
            if self.endpoint is not None:
                self.setTimeout(self.timeout)
        POP3Client.lineReceived(self, line)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def serverGreeting(self, greeting: bytes) -> None:
        if not self.greeted.called:
            self.greeted.callback(self)

    def connectionLost(self, reason: Any = None) -> None:
        if self._injected:
            reason = Failure(
                TLSFailed(
                    host=self.host,
                    port=self.port,
                    reason="the server sent unencrypted data after its STLS reply (an injection attempt?)",
                )
            )
        POP3Client.connectionLost(self, reason)
        wrong = None
        if self.endpoint is not None and self.firstLine is not None and self._greetingError:
            wrong = wrongService(self.endpoint, "pop3", self.firstLine)
        if self._timedOut and self.firstLine is None and self.endpoint is not None:
            reason = Failure(noGreeting(self.endpoint, self.endpoint.firstTimeout))
        elif self._timedOut:
            from twisted.internet.error import TimeoutError

            reason = Failure(TimeoutError())
        elif wrong is not None:
            reason = Failure(wrong)
        elif self._greetingError:
            reason = Failure(ServerErrorResponse(self._greetingError))
        if not self.greeted.called:
            self.greeted.errback(reason)
        self.closed.callback(None)


class _Factory(ClientFactory):
    def __init__(self, build: Callable[[], _POP3Protocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: Any) -> _POP3Protocol:
        protocol = self._build()
        protocol.factory = self
        return protocol


class POP3Session:
    """
    One POP3 conversation.  Make it with L{POP3Session.connect}.

    @ivar endpoint: the server.
    @ivar protocol: the L{twisted.mail.pop3.AdvancedPOP3Client} (C{twisted.mail.pop3client.POP3Client}) underneath.
    """

    def __init__(self, protocol: _POP3Protocol, endpoint: ServerEndpoint, creator: Optional[VerifyingCreator]) -> None:
        self.protocol = protocol
        self.endpoint = endpoint
        self._creator = creator
        self._sizes: Optional[List[int]] = None

    @classmethod
    def connect(cls, reactor: Any, endpoint: ServerEndpoint, transcript: Optional[Transcript] = None) -> defer.Deferred:
        """
        Connect, read the greeting and, in C{starttls} mode, switch to TLS
        with STLS; a server that does not offer STLS is an error, never a
        reason to continue in the clear (RFC 2595 §2.2).

        @return: a Deferred firing with a L{POP3Session}, or failing with a
            L{mailnet.errors.ClientError}.
        """
        try:
            creator = endpoint.creator()
        except Exception as e:
            return defer.fail(e)

        def build() -> _POP3Protocol:
            return _POP3Protocol(endpoint.timeout, transcript, reactor, endpoint.host, endpoint.port, endpoint)

        d: defer.Deferred = endpoint.endpoint(reactor, creator).connect(_Factory(build))
        d.addCallback(lambda protocol: protocol.greeted)

        def greeted(protocol: _POP3Protocol) -> Any:
            session = cls(protocol, endpoint, creator)
            if endpoint.tls is TLSMode.implicit:
                protocol.secure = True
                return session
            if endpoint.tls is TLSMode.none:
                return session
            started = protocol.startTLS(creator)

            def secured(capabilities: Any) -> "POP3Session":
                protocol.secure = True
                return session

            def noTLS(reason: Failure) -> Failure:
                reason.trap(TLSNotSupportedError)
                protocol.close()
                return Failure(TLSUnavailable(host=endpoint.host, port=endpoint.port, command="STLS"))

            started.addCallbacks(secured, noTLS)
            return started

        d.addCallback(greeted)
        d.addErrback(lambda reason: Failure(cls._translate(reason, endpoint, creator, "the greeting")))
        return d

    @staticmethod
    def _translate(reason: Failure, endpoint: ServerEndpoint, creator: Optional[VerifyingCreator], command: str) -> BaseException:
        if isinstance(reason.value, ServerErrorResponse):
            return ServerError(host=endpoint.host, command=command, reply="-ERR " + _text(reason.value))
        return clientError(reason, endpoint, creator)

    def _call(self, command: str, d: defer.Deferred) -> defer.Deferred:
        d.addErrback(lambda reason: Failure(self._translate(reason, self.endpoint, self._creator, command)))
        return d

    def login(self, username: str, password: str) -> defer.Deferred:
        """
        Log in with USER and PASS (RFC 1939 §7).  The password is sent only
        over TLS, unless the endpoint allows plaintext.

        @raise AuthenticationFailed: (in the Deferred) the server said -ERR.
        """
        if not self.protocol.secure and not self.endpoint.allowPlaintext:
            return defer.fail(PlaintextRefused(host=self.endpoint.host, user=username))
        d = self.protocol.user(username.encode("utf-8"))
        d.addCallback(lambda _: self.protocol.password(password.encode("utf-8")))

        def refused(reason: Failure) -> Failure:
            if isinstance(reason.value, ServerErrorResponse):
                return Failure(AuthenticationFailed(host=self.endpoint.host, user=username, reply="-ERR " + _text(reason.value)))
            return Failure(self._translate(reason, self.endpoint, self._creator, "USER/PASS"))

        d.addCallbacks(lambda _: None, refused)
        return d

    def stat(self) -> defer.Deferred:
        """@return: Deferred firing with C{(count, octets)}."""
        return self._call("STAT", self.protocol.stat())

    def list(self) -> defer.Deferred:
        """
        @return: Deferred firing with the message sizes in octets, message
            1 first (L{None} for a message deleted in this session).
        """
        d = self._call("LIST", self.protocol.listSize())

        def remember(sizes: List[Optional[int]]) -> List[Optional[int]]:
            self._sizes = list(sizes)  # type: ignore[arg-type]
            return sizes

        d.addCallback(remember)
        return d

    def uidl(self) -> defer.Deferred:
        """@return: Deferred firing with the unique ids (L{str}), message 1 first."""
        d = self._call("UIDL", self.protocol.listUID())
        d.addCallback(lambda uids: [u.decode("ascii", "replace") if isinstance(u, bytes) else u for u in uids])
        return d

    def _check(self, number: int) -> Optional[defer.Deferred]:
        if number < 1 or (self._sizes is not None and number > len(self._sizes)):
            count = len(self._sizes) if self._sizes is not None else "fewer"
            return defer.fail(NoSuchMessage(number=number, count=count))
        return None

    def _noSuchMessage(self, number: int, command: str) -> Callable[[Failure], Failure]:
        def translate(reason: Failure) -> Failure:
            if isinstance(reason.value, ServerErrorResponse):
                count = len(self._sizes) if self._sizes is not None else "fewer"
                return Failure(NoSuchMessage(number=number, count=count))
            return Failure(self._translate(reason, self.endpoint, self._creator, command))

        return translate

    def top(self, number: int, lines: int = 0) -> defer.Deferred:
        """
        @return: Deferred firing with the header section and the first
            C{lines} body lines of a message (TOP, RFC 1939 §7), CRLF.
        """
        return self._fetch(number, lines)

    def retrieve(self, number: int, progress: Optional[Callable[[int], None]] = None) -> defer.Deferred:
        """
        @param progress: called with the octets of each line as it arrives
            (for a progress bar; the whole is about the size from LIST).
        @return: Deferred firing with a whole message (RETR), CRLF line
            endings.
        """
        if progress is None:
            return self._fetch(number, None)
        self.protocol.onBytes = progress

        def done(result: Any) -> Any:
            self.protocol.onBytes = None
            return result

        return self._fetch(number, None).addBoth(done)

    def _fetch(self, number: int, lines: Optional[int]) -> defer.Deferred:
        failed = self._check(number)
        if failed is not None:
            return failed
        d = self.protocol.retrieve(number - 1, lines=lines)
        d.addCallbacks(lambda got: b"".join(line + b"\r\n" for line in got), self._noSuchMessage(number, "RETR" if lines is None else "TOP"))
        return d

    def delete(self, number: int) -> defer.Deferred:
        """Mark a message deleted (DELE); it goes at a successful L{quit}."""
        failed = self._check(number)
        if failed is not None:
            return failed
        d = self.protocol.delete(number - 1)
        d.addCallbacks(lambda _: None, self._noSuchMessage(number, "DELE"))
        return d

    def quit(self) -> defer.Deferred:
        """
        End the session (QUIT): the server commits deletions.

        @return: Deferred firing with L{None} once the connection is closed,
            or failing when the server reports it could not commit.
        """
        d = self._call("QUIT", self.protocol.quit())

        def closed(_: Any) -> defer.Deferred:
            self.protocol.close()
            return self.protocol.closed

        def failed(reason: Failure) -> Failure:
            self.protocol.close()
            return reason

        d.addCallbacks(closed, failed)
        return d

    def abort(self) -> defer.Deferred:
        """Close without QUIT: deletions are abandoned.  @return: Deferred firing at close."""
        self.protocol.close()
        return self.protocol.closed


__all__ = ["POP3Session", "ClientError"]
