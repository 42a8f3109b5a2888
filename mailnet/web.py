# -*- test-case-name: tests.test_web -*-
"""
The C{http} listener (C{--http EP}, default C{tcp:2880:interface=127.0.0.1}):
metrics, health and client autoconfiguration, with twisted.web.

    GET  /metrics                               Prometheus text format (L{mailnet.metrics})
    GET  /healthz                               200 "ok", or 503 with the reasons
    GET  /mail/config-v1.1.xml?emailaddress=A   Thunderbird autoconfig
    GET  /.well-known/autoconfig/mail/config-v1.1.xml
    POST /autodiscover/autodiscover.xml         Microsoft (Outlook) autodiscover
    GET  /apple/mail.mobileconfig?emailaddress=A  Apple configuration profile
    GET  /.well-known/mta-sts.txt               the MTA-STS policy (RFC 8461)

Every request is bounded: its body (L{MAX_BODY}), the time it may take
(L{TIMEOUT}), and the size of its query.  Nothing a client sends is
logged.

C{/healthz} finds out whether the data dir takes writes by writing
(L{WriteProbe}): C{os.access} says yes to root whatever the disk, and
knows nothing of a read-only remount or a full file system.
"""

import errno
import os
from typing import Any, Callable, Dict, List, Optional

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.web import http, resource, server

from mailnet import autoconfig
from mailnet.address import normalizeAddress, normalizeDomain
from mailnet.errors import BadAddress
from mailnet.metrics import registryFor

#: Largest request body kept (autodiscover requests are a few hundred octets).
MAX_BODY = autoconfig.MAX_REQUEST

#: Seconds a connection may stay idle.
TIMEOUT = 30

_XML = b"application/xml; charset=utf-8"
_TEXT = b"text/plain; charset=utf-8"

#: Seconds a write probe's answer is reused: a monitor polling /healthz
#: often costs one small file and one fsync per period, not per request.
PROBE_EVERY = 5.0

#: The probe's file in the data dir (with the process id: several worker
#: processes may probe at once).  Removed straight away.
PROBE_NAME = ".mailnet-healthz-probe"

log = Logger()


def _describe(error: OSError) -> str:
    """C{Read-only file system (EROFS)}: the errno's meaning and name."""
    if not error.errno:
        return str(error)
    name = errno.errorcode.get(error.errno)
    return os.strerror(error.errno) + (" (%s)" % (name,) if name else "")


class WriteProbe:
    """
    Whether the data dir takes writes, found out the only sure way: create
    a small file, write it, fsync it and remove it.  Done on C{run}'s
    thread pool, never on the reactor (an fsync can take long on a busy
    disk), at most once every L{PROBE_EVERY} seconds: meanwhile the last
    answer is given, and requests that arrive while a probe runs wait for
    that one.

    @param dataDir: the directory to probe.
    @param run: runs a blocking callable off the reactor, returning a
        L{Deferred} (L{mailnet.store.maildir.ThreadRunner}).
    @param clock: C{seconds()}, the reactor in the server.
    @param opener: C{os.open}'s signature; tests pass one that fails.
    """

    def __init__(
        self,
        dataDir: str,
        run: Callable[..., Deferred],
        clock: Any,
        every: float = PROBE_EVERY,
        opener: Callable[..., int] = os.open,
    ) -> None:
        self.dataDir = dataDir
        self.run = run
        self.clock = clock
        self.every = every
        self.opener = opener
        self._answer: Optional[str] = None
        self._when: Optional[float] = None
        self._waiting: Optional[List[Deferred]] = None

    def probe(self) -> Optional[str]:
        """
        Probe now (blocking).

        @return: L{None} when the data dir took the write, else the problem.
        """
        path = os.path.join(self.dataDir, "%s.%d" % (PROBE_NAME, os.getpid()))
        try:
            fd = self.opener(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o600)
            try:
                try:
                    os.write(fd, b"mailnet /healthz write probe\n")
                    os.fsync(fd)
                finally:
                    os.close(fd)
            finally:
                os.unlink(path)
        except OSError as e:
            return "the data dir %s is not writable: %s" % (self.dataDir, _describe(e))
        return None

    def check(self) -> Deferred:
        """
        @return: a L{Deferred} firing with L{None} (writable) or the
            problem, probing only if the last answer is older than C{every}.
        """
        now = self.clock.seconds()
        if self._when is not None and 0 <= now - self._when < self.every:
            return succeed(self._answer)
        d: Deferred = Deferred()
        if self._waiting is not None:
            self._waiting.append(d)
            return d
        self._waiting = [d]

        def done(answer: Optional[str]) -> None:
            self._answer, self._when = answer, self.clock.seconds()
            waiting, self._waiting = self._waiting or [], None
            for each in waiting:
                each.callback(answer)

        def failed(failure: Any) -> None:
            log.failure("the /healthz write probe failed", failure)
            done("the data dir %s could not be probed" % (self.dataDir,))

        maybeDeferred(self.run, self.probe).addCallbacks(done, failed)
        return d


class _Request(server.Request):
    """A request whose body is kept only up to L{MAX_BODY} octets."""

    tooLarge = False

    def gotLength(self, length: Optional[int]) -> None:
        if length is not None and length > MAX_BODY:
            # Answered now, rather than after reading (or waiting for) it all.
            self.tooLarge = True
            transport = self.channel.transport
            assert transport is not None
            transport.write(b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            transport.loseConnection()
        server.Request.gotLength(self, 0 if self.tooLarge else length)

    def handleContentChunk(self, data: bytes) -> None:
        content = self.content
        if self.tooLarge or content is None:
            return
        if content.tell() + len(data) > MAX_BODY:
            self.tooLarge = True
            content.seek(0)
            content.truncate()
            return
        server.Request.handleContentChunk(self, data)


def _finish(request: Any, code: int, body: bytes, contentType: bytes = _TEXT) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", contentType)
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    return body


class MailnetResource(resource.Resource):
    """
    Every path of the listener, dispatched in one table.

    @param service: the running L{mailnet.service.MailService} (its
        C{config}, C{listeners}, C{accounts}, C{diskSpace}).
    """

    isLeaf = True

    def __init__(self, service: Any, probe: Optional[WriteProbe] = None) -> None:
        resource.Resource.__init__(self)
        self.service = service
        self.registry = registryFor(service)
        if probe is None:
            from mailnet.store.maildir import runSynchronously

            # The service's disk thread pool (runSynchronously for a bare
            # service object, as some tests build).
            probe = WriteProbe(service.config.data_dir, getattr(service, "_run", None) or runSynchronously, service.reactor)
        self.probe = probe
        self._get: Dict[bytes, Callable[[Any], bytes]] = {
            b"/metrics": self.metrics,
            b"/healthz": self.healthz,
            b"/mail/config-v1.1.xml": self.thunderbird,
            b"/.well-known/autoconfig/mail/config-v1.1.xml": self.thunderbird,
            b"/apple/mail.mobileconfig": self.apple,
            b"/.well-known/mta-sts.txt": self.mtaSTS,
        }

    def render(self, request: Any) -> bytes:
        if getattr(request, "tooLarge", False):
            return _finish(request, http.REQUEST_ENTITY_TOO_LARGE, b"request too large\n")
        path = request.path
        if path.lower() == b"/autodiscover/autodiscover.xml":
            if request.method != b"POST":
                return _finish(request, http.NOT_ALLOWED, b"POST an autodiscover request\n")
            return self.autodiscover(request)
        handler = self._get.get(path)
        if handler is None:
            return _finish(request, http.NOT_FOUND, b"not found\n")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return _finish(request, http.NOT_ALLOWED, b"method not allowed\n")
        return handler(request)

    # --- metrics and health -------------------------------------------------

    def metrics(self, request: Any) -> bytes:
        return _finish(request, http.OK, generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4.encode("ascii"))

    def problems(self, writable: Optional[str] = None) -> List[str]:
        """
        What keeps the server from being healthy; empty when it is.

        @param writable: the L{WriteProbe}'s problem, if it found one.
        """
        found = []
        for role, listeners in sorted(getattr(self.service, "listeners", {}).items()):
            for listener in listeners:
                if listener.port is None:
                    found.append("listener %s (%s) is not listening" % (role, listener.description))
        if writable is not None:
            found.append(writable)
        disk = getattr(self.service, "diskSpace", None)
        if disk is not None and disk.low():
            free, total = disk.usage()
            found.append(
                "free space on the data dir is %d octets, below min_free_space (%d): new mail is refused"
                % (free, disk.threshold(total))
            )
        return found

    def healthz(self, request: Any) -> Any:
        gone: List[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(writable: Optional[str]) -> None:
            if gone:
                return  # the client left (or the request timed out)
            found = self.problems(writable)
            if found:
                body = _finish(request, http.SERVICE_UNAVAILABLE, "".join(p + "\n" for p in found).encode("utf-8"))
            else:
                body = _finish(request, http.OK, b"ok\n")
            # Answered later (the probe): a Content-Length, not chunks, as before.
            request.setHeader(b"content-length", b"%d" % (len(body),))
            request.write(body)
            request.finish()

        self.probe.check().addCallback(answer).addErrback(
            lambda f: log.failure("answering /healthz failed", f)
        )
        return server.NOT_DONE_YET

    # --- autoconfiguration --------------------------------------------------

    def _servers(self) -> List[autoconfig.Server]:
        ports = self.service.ports() if hasattr(self.service, "ports") else {}
        return autoconfig.servers(self.service.config, ports)

    def _localDomains(self) -> List[str]:
        config = self.service.config
        accounts = getattr(self.service, "accounts", None)
        try:
            stored = accounts.domains() if accounts is not None else []
        except Exception:
            stored = []
        return list(dict.fromkeys(list(config.domains) + list(stored)))

    def _address(self, request: Any) -> Optional[str]:
        """
        The C{emailaddress} query argument, if it is sane and in a local
        domain; C{""} if there is none.  L{None}: answer 404.
        """
        values = request.args.get(b"emailaddress", [])
        if not values:
            return ""
        raw = values[0]
        if len(raw) > 254:
            return None
        try:
            address = normalizeAddress(raw.decode("utf-8"), allowUTF8=True)
            domain = normalizeDomain(autoconfig.domainOf(address))
        except (UnicodeDecodeError, BadAddress, ValueError):
            return None
        if domain not in self._localDomains():
            return None
        return address

    def thunderbird(self, request: Any) -> bytes:
        address = self._address(request)
        domains = self._localDomains()
        if address is None or not domains:
            return _finish(request, http.NOT_FOUND, b"no such domain here\n")
        domain = normalizeDomain(autoconfig.domainOf(address)) if address else domains[0]
        body = autoconfig.thunderbird(self.service.config.hostname, domain, self._servers())
        return _finish(request, http.OK, body, _XML)

    def apple(self, request: Any) -> bytes:
        address = self._address(request)
        if not address:
            return _finish(request, http.NOT_FOUND, b"give ?emailaddress= of a local domain\n")
        try:
            body = autoconfig.mobileconfig(self.service.config.hostname, address, self._servers())
        except autoconfig.BadRequest as e:
            return _finish(request, http.NOT_FOUND, ("%s\n" % (e,)).encode("utf-8"))
        request.setHeader(b"content-disposition", b'attachment; filename="mail.mobileconfig"')
        return _finish(request, http.OK, body, b"application/x-apple-aspen-config")

    def autodiscover(self, request: Any) -> bytes:
        request.content.seek(0)
        try:
            address = normalizeAddress(autoconfig.autodiscoverAddress(request.content.read(MAX_BODY + 1)), allowUTF8=True)
            domain = normalizeDomain(autoconfig.domainOf(address))
        except (autoconfig.BadRequest, BadAddress, ValueError):
            return _finish(request, http.BAD_REQUEST, b"not an autodiscover request\n")
        if domain not in self._localDomains():
            return _finish(request, http.NOT_FOUND, b"no such domain here\n")
        body = autoconfig.autodiscover(self.service.config.hostname, address, self._servers())
        return _finish(request, http.OK, body, _XML)

    def mtaSTS(self, request: Any) -> bytes:
        return _finish(request, http.OK, autoconfig.mtaSTSPolicy(self.service.config))


class MailnetSite(server.Site):
    """The site of the C{http} listener: no access log, short timeouts."""

    requestFactory = _Request
    noisy = False

    def __init__(self, service: Any) -> None:
        server.Site.__init__(self, MailnetResource(service), timeout=TIMEOUT)
        # Form parsing would read POST bodies into request.args: not wanted.
        self._parsePOSTFormSubmission = False

    def log(self, request: Any) -> None:
        pass


def makeSite(service: Any) -> server.Site:
    return MailnetSite(service)
