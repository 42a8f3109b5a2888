# -*- test-case-name: tests.test_service -*-
"""
Assembles the running mail system from a L{Config}: one account store, one
Maildir store, one relay queue, one cred portal, and a listener for each
configured endpoint, all sharing them.
"""

import errno
import functools
import os
import signal
import sqlite3
from typing import IO, Any, Callable, Dict, List, Optional

from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, globalLogPublisher, jsonFileLogObserver
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool

from mailnet import logtext
from mailnet.config import LISTENERS, Config
from mailnet.cred import CHECKS_PER_HASHING_THREAD, Authenticator, hashingThreads, makePortal
from mailnet.datalock import DataDirLock
from mailnet.diskspace import DiskSpace
from mailnet.quota import Quotas, deliverWarning
from mailnet.storage import StorageGuard
from mailnet.dns import DNSClient
from mailnet.errors import ConfigError
from mailnet.imap.server import IMAPFactory
from mailnet.limits import DESCRIPTORS_PER_CONNECTION, ConnectionLimiter, LimitingFactory, fitDescriptorLimit
from mailnet.pop3.server import POP3Factory
from mailnet.smtp._judge import WorkerPoolService, judgeFromConfig
from mailnet.smtp.delivery import DeliveryAgent
from mailnet.smtp.relay import RelayService
from mailnet.smtp.server import SMTPFactory
from mailnet.store.accounts import openAccountStore
from mailnet.store.folders import AccountRegistry
from mailnet.store import journal as _journal
from mailnet.store.maildir import MaildirStore, ThreadRunner
from mailnet.store.queue import DiskQueue
from mailnet.store.watch import makeWatcher
from mailnet.tls import ReloadableContextFactory, certificatePaths, ensureCertificate, fingerprint
from mailnet.web import makeSite
from mailnet.workers import Inherited, WorkerPool, adoptedEndpoint, checkPlatform, connectionShare

log = Logger()

# Listeners whose plain tcp: endpoints are wrapped in TLS (RFC 8314).
IMPLICIT_TLS = ("smtps", "pop3s", "imaps")


class ListenerService(service.Service):
    """
    Listens on one endpoint.  Binding happens in C{privilegedStartService}
    so that twistd can bind ports below 1024 before dropping privileges.
    """

    def __init__(self, role: str, description: str, endpoint, factory) -> None:
        self.role = role
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.port: Optional[IListeningPort] = None
        self._listening: Optional[Deferred] = None

    def privilegedStartService(self) -> None:
        service.Service.privilegedStartService(self)
        self._listening = self.endpoint.listen(self.factory)
        failures: List = []
        self._listening.addCallbacks(self._listened, failures.append)
        if failures:
            # Bind errors must stop start-up with a message, not be logged later.
            raise ConfigError(
                where="listener %s (%s)" % (self.role, self.description),
                problem=failures[0].getErrorMessage(),
            )

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        address = port.getHost()
        log.info(
            "{role} listening on {host}:{port}",
            role=self.role,
            host=getattr(address, "host", "?"),
            port=getattr(address, "port", "?"),
        )
        return port

    def startService(self) -> None:
        if self._listening is None:
            self.privilegedStartService()
        service.Service.startService(self)

    def stopService(self) -> Deferred:
        service.Service.stopService(self)
        # IMAP sessions are told (RFC 9051 §7.1.5: BYE) rather than cut.
        shutdown = getattr(getattr(self.factory, "wrappedFactory", self.factory), "shutdown", None)
        if shutdown is not None:
            shutdown()
        port, self.port = self.port, None
        return maybeDeferred(port.stopListening) if port is not None else maybeDeferred(lambda: None)


class ThreadPoolService(service.Service):
    """Starts and stops a thread pool (disk syncs, or password hashing)."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        service.Service.startService(self)
        self.pool.start()

    def stopService(self) -> None:
        service.Service.stopService(self)
        self.pool.stop()


class TmpSweeperService(service.Service):
    """
    Removes stale files from the Maildirs' C{tmp/} (the leftovers of a crash
    or a full disk) at start and then every C{interval} seconds.  The
    timer runs on the reactor's clock; the sweep itself in the thread pool
    (L{MaildirStore.sweepTmp}).
    """

    def __init__(self, mailStore: MaildirStore, clock, interval: float = 86400.0) -> None:
        self.mailStore = mailStore
        self.interval = interval
        self._loop = LoopingCall(self._sweep)
        self._loop.clock = clock

    def _sweep(self) -> Deferred:
        d = self.mailStore.sweepTmp()

        def swept(removed: int) -> None:
            if removed:
                log.info("removed {n} stale file(s) from Maildir tmp/ directories", n=removed)

        def failed(failure) -> None:
            # Never stop the loop: try again at the next interval.
            log.failure("sweeping Maildir tmp/ directories failed", failure)

        return d.addCallbacks(swept, failed)

    def startService(self) -> None:
        service.Service.startService(self)
        self._loop.start(self.interval, now=True)

    def stopService(self) -> Optional[Deferred]:  # type: ignore[override]
        service.Service.stopService(self)
        if self._loop.running:
            self._loop.stop()
        return None


def dataDirProblem(error: BaseException) -> str:
    """
    One line saying what went wrong with the data dir at start-up and what
    to do, for the errors a person can fix (no traceback in the log).
    """
    if isinstance(error, OSError):
        where = error.filename or "it"
        if error.errno in (errno.EACCES, errno.EPERM):
            return "permission denied on %s: run mailnet as the user who owns the data dir (or chown it to that user)" % (where,)
        if error.errno == errno.ENOSPC:
            return "no space left on the device of %s: free some space, then start mailnet again" % (where,)
        if error.errno == errno.EROFS:
            return "%s is on a read-only file system: give a writable --data-dir" % (where,)
        return "%s: %s" % (where, error.strerror or error)
    return "the account store cannot be opened: %s (is the disk full, or the file owned by another user?)" % (error,)


class MailService(service.MultiService):
    """
    The whole server.  Attributes give tests and tools the shared parts:
    C{accounts}, C{mailStore}, C{queue}, C{delivery}, C{authenticator},
    C{tls}, C{limiter} (the connection budget all listeners share), and
    C{listeners} (role -> list of L{ListenerService}).
    """

    def __init__(self, config: Config, reactor, handleSignals: bool = True, inherited: Optional[Inherited] = None) -> None:
        service.MultiService.__init__(self)
        self.handleSignals = handleSignals
        # In a worker process (mailnet.workers): the parent's listening
        # sockets; the parent keeps the lock, the relay queue and the sweeper.
        self.inherited = inherited
        checkPlatform(config.workers)
        processes = inherited.processes if inherited is not None else config.workers
        self.config = config
        self.reactor = reactor
        dataDir = config.data_dir

        # Nothing here creates files: twistd --uid binds the ports as root
        # (privilegedStartService), drops privileges, and only then calls
        # startService, where the data dir is prepared.  So everything in it
        # belongs to the service user.
        pool = ThreadPool(minthreads=1, maxthreads=16, name="mailnet-io")
        ThreadPoolService(pool).setServiceParent(self)
        run = self._run = ThreadRunner(reactor, pool)
        # Password hashing (Argon2, CPU-bound) on a small pool of its own,
        # never on the one that syncs Maildirs: a login flood must not
        # queue in front of deliveries (issue 11).
        self.hashPool = ThreadPool(minthreads=1, maxthreads=hashingThreads(), name="mailnet-hash")
        ThreadPoolService(self.hashPool).setServiceParent(self)

        self.accounts = openAccountStore(dataDir, openNow=False)
        # Small messages are acknowledged once journaled (one sync per
        # batch) and made durable in the Maildirs within a second; the
        # parent replays every journal before serving (mailnet.store.journal).
        mailRoot = os.path.join(dataDir, "mail")
        self.journal = _journal.DeliveryJournal(
            _journal.journalPath(dataDir, inherited.index if inherited is not None else 0),
            mailRoot, reactor, run, size=_journal.DEFAULT_SIZE,
        )
        _journal.JournalService(self.journal, dataDir, recoverAll=inherited is None).setServiceParent(self)
        self.mailStore = MaildirStore(mailRoot, run, config.hostname, journal=self.journal)
        self.queue = DiskQueue(os.path.join(dataDir, "queue"), run, reactor, config.hostname)
        if inherited is None:
            TmpSweeperService(self.mailStore, reactor).setServiceParent(self)
        self.delivery = DeliveryAgent(
            self.accounts, self.mailStore, self.queue, clock=reactor, primaryDomain=config.domains[0] if config.domains else None
        )
        # IMAP accounts, shared by a user's sessions; the directory watcher
        # (inotify, else polling) is added at start (see startService).
        self.imapAccounts = AccountRegistry(self.mailStore, run, hostname=config.hostname, clock=reactor)
        portal = makePortal(
            self.accounts,
            self.mailStore,
            ThreadRunner(reactor, self.hashPool),
            accounts=self.imapAccounts,
            # Successful logins remembered per process ([limits] login_cache_ttl).
            clock=reactor,
            cacheTTL=config.limits.login_cache_ttl,
        )
        limits = config.limits
        self.authenticator = Authenticator(
            portal,
            reactor,
            baseDelay=limits.auth_failure_delay,
            maxDelay=limits.max_auth_failure_delay,
            maxChecking=CHECKS_PER_HASHING_THREAD * self.hashPool.max,
            maxSuspectChecking=max(1, self.hashPool.max // 2),
        )

        certPath, keyPath, selfSigned = certificatePaths(dataDir, config.tls_cert, config.tls_key)
        # A configured key is read now, while we may still be root: keys
        # such as Let's Encrypt's are readable by root only.
        self.tls = ReloadableContextFactory(certPath, keyPath, loadNow=not selfSigned)
        self.certificateGenerated = False

        # One resolver for every look-up ([dns] resolvers); signing and
        # verdicts wait on DNS in their own threads, not the disk pool's.
        self.dns = DNSClient(reactor, config.dns_resolvers)
        judgePool = ThreadPool(minthreads=0, maxthreads=8, name="mailnet-verdicts")
        WorkerPoolService(judgePool, reactor).setServiceParent(self)
        self.judge = judgeFromConfig(config, reactor, self.dns, ThreadRunner(reactor, judgePool))

        self.relay: Optional[RelayService] = None
        if inherited is None:
            relay = self.relay = RelayService(self.queue, config.relay, config.hostname, reactor, self.delivery.receive, resolver=self.dns)
            relay.setServiceParent(self)
        else:
            self.queue.listener = inherited.notifier()
        # Free space in the data dir ([limits] min_free_space), read by SMTP and /healthz.
        self.diskSpace = DiskSpace(dataDir, limits.min_free_space)
        self.quotas = Quotas(dataDir, self.accounts, self.mailStore.pathFor, run=run)
        self.quotas.warn = functools.partial(deliverWarning, self.mailStore, config.hostname)
        self.storage = StorageGuard(self.diskSpace, self.quotas)

        common = dict(hostname=config.hostname, authenticator=self.authenticator, limits=limits,
                      allowPlaintextAuth=config.allow_plaintext_auth, clock=reactor)
        smtpCommon = dict(common, judge=self.judge)
        makers: Dict[str, Callable[[], Any]] = {
            "smtp": lambda: SMTPFactory(role="mta", delivery=self.delivery, tlsOptions=self.tls, **smtpCommon),
            "submission": lambda: SMTPFactory(role="submission", delivery=self.delivery, tlsOptions=self.tls, **smtpCommon),
            "smtps": lambda: SMTPFactory(role="smtps", delivery=self.delivery, tlsOptions=None, **smtpCommon),
            "pop3": lambda: POP3Factory(tlsOptions=self.tls, implicitTLS=False, **common),
            "pop3s": lambda: POP3Factory(tlsOptions=None, implicitTLS=True, **common),
            "imap": lambda: IMAPFactory(tlsOptions=self.tls, implicitTLS=False, run=run, quotas=self.quotas, **common),
            "imaps": lambda: IMAPFactory(tlsOptions=None, implicitTLS=True, run=run, quotas=self.quotas, **common),
            "http": lambda: makeSite(self),
        }
        # One connection budget for every listener, and each client's share.
        # With several processes, each gets its part of the budget.
        self.limiter = ConnectionLimiter(connectionShare(limits.max_connections, processes), limits.max_connections_per_client)
        self.dataLock = DataDirLock(dataDir)
        self.listeners: Dict[str, List[ListenerService]] = {}
        for role in LISTENERS:
            for description in config.listen.get(role, ()):
                factory = makers[role]()
                factory.storage = self.storage
                # ListenerService logs the listening address once; Twisted's
                # "Starting factory" lines would only repeat it.
                factory.noisy = False
                if role in IMPLICIT_TLS and not description.startswith("ssl:"):
                    factory = TLSMemoryBIOFactory(self.tls, False, factory)
                    factory.noisy = False
                # Outermost, so that a refused connection costs no TLS handshake.
                factory = LimitingFactory(self.limiter, factory)
                factory.role = role
                try:
                    if inherited is not None:
                        endpoint = adoptedEndpoint(reactor, inherited, role, description)
                    else:
                        endpoint = serverFromString(reactor, description)
                except (ValueError, KeyError, TypeError) as e:
                    raise ConfigError(where="listener %s" % (role,), problem="bad endpoint %r: %s" % (description, e))
                listener = ListenerService(role, description, endpoint, factory)
                listener.setServiceParent(self)
                self.listeners.setdefault(role, []).append(listener)
        # After the listeners: it starts once they are bound.
        self.workers: Optional[WorkerPool] = None
        if inherited is None and processes > 1:
            self.workers = WorkerPool(self, processes, reactor)
            self.workers.setServiceParent(self)

    def prepareDataDir(self) -> None:
        """
        Create the data dir, the self-signed certificate if needed, and the
        configured domains.

        @raise ConfigError: any of it is impossible.
        """
        config = self.config
        try:
            os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
        except OSError as e:
            raise ConfigError(where="data_dir %s" % (config.data_dir,), problem="cannot create it: %s" % (e.strerror,))
        # One daemon per data dir: a second would run the same queue.
        # (Its workers run under the parent's lock.)
        if self.inherited is None:
            self.dataLock.acquire()
        if not (config.tls_cert and config.tls_key):
            try:
                _, _, self.certificateGenerated = ensureCertificate(config.data_dir, config.hostname, None, None)
            except OSError as e:
                raise ConfigError(where=self.tls.certPath, problem="cannot create the certificate: %s" % (e.strerror,))
            self.tls.reload()
        self.accounts.open()
        for domain in config.domains:
            if not self.accounts.isLocalDomain(domain):
                self.accounts.addDomain(domain)

    def privilegedStartService(self) -> None:
        # Before binding: the budget must fit RLIMIT_NOFILE (outgoing relay
        # connections need descriptors too).
        fitDescriptorLimit(self.limiter, self.config.relay.max_connections * DESCRIPTORS_PER_CONNECTION)
        try:
            service.MultiService.privilegedStartService(self)
        except ConfigError as e:
            log.critical("mailnet: error: {error}", error=str(e))
            raise SystemExit(1)

    def startService(self) -> None:
        try:
            try:
                self.prepareDataDir()
            except (OSError, sqlite3.Error) as e:
                raise ConfigError(where="data_dir %s" % (self.config.data_dir,), problem=dataDirProblem(e))
        except ConfigError as e:
            self.dataLock.release()
            log.critical("mailnet: error: {error}", error=str(e))
            # A clean exit with status 1: twistd prints a traceback for anything else.
            raise SystemExit(1)
        if self.listeners.get("imap") or self.listeners.get("imaps"):
            # IDLE hears of deliveries by SMTP and by other processes.
            self.imapAccounts.watcher = makeWatcher(self.reactor, self._run)
        service.MultiService.startService(self)
        if self.handleSignals:
            self._installSignalHandler()
        # twistd's text log (--logfile, stdout): the same lines, cheaper
        # for the reactor thread (a line per message, issue 14).
        logtext.speedUp(globalLogPublisher)
        self._openJSONLog()
        if self.inherited is None:  # the parent has said it all
            self._logStartup()

    def stopService(self) -> Deferred:
        stopped = service.MultiService.stopService(self)
        self.imapAccounts.closeIdle()
        watcher, self.imapAccounts.watcher = self.imapAccounts.watcher, None
        if watcher is not None and hasattr(watcher, "close"):
            watcher.close()
        self._closeJSONLog()

        def release(result: Any) -> Any:
            self.dataLock.release()
            return result

        stopped.addBoth(release)
        return stopped

    _jsonLog: Optional[IO[str]] = None
    _jsonObserver = None

    def _openJSONLog(self) -> None:
        """C{log_json}: every log event as a JSON line, for log shippers."""
        # A worker's events reach the parent's log, this file included.
        if not self.config.log_json or self.inherited is not None:
            return
        self._jsonLog = open(self.config.log_json, "a", encoding="utf-8")
        self._jsonObserver = jsonFileLogObserver(self._jsonLog)
        globalLogPublisher.addObserver(self._jsonObserver)

    def _closeJSONLog(self) -> None:
        if self._jsonObserver is not None and self._jsonLog is not None:
            globalLogPublisher.removeObserver(self._jsonObserver)
            self._jsonLog.close()
            self._jsonLog = self._jsonObserver = None

    def reopenLogs(self) -> None:
        """SIGHUP: reopen the JSON log file (after logrotate moved it)."""
        self._closeJSONLog()
        self._openJSONLog()

    def _logStartup(self) -> None:
        config = self.config
        log.info("mailnet {hostname}: data in {dataDir}", hostname=config.hostname, dataDir=os.path.abspath(config.data_dir))
        domains = self.accounts.domains()
        log.info("local domains: {domains}", domains=", ".join(domains) or "(none)")
        log.info(
            "TLS certificate {path}{generated}, SHA-256 fingerprint {fp}",
            path=self.tls.certPath,
            generated=" (self-signed, generated now)" if self.certificateGenerated else "",
            fp=fingerprint(self.tls.certPath),
        )
        if not domains:
            log.warn(
                "no local domain yet: add one with 'mailnet-admin --data-dir {dataDir} domain add example.test' "
                "or start with --domain example.test",
                dataDir=config.data_dir,
            )
        if not self.accounts.users():
            log.warn(
                "no users yet: add one with 'mailnet-admin --data-dir {dataDir} user add alice@{domain}'",
                dataDir=config.data_dir,
                domain=domains[0] if domains else "example.test",
            )

    def reloadCertificate(self) -> None:
        """SIGHUP: use a renewed certificate for new connections."""
        try:
            self.tls.reload()
        except ConfigError as e:
            log.error("TLS certificate not reloaded, keeping the old one: {error}", error=str(e))
        else:
            log.info("TLS certificate reloaded: {fp}", fp=fingerprint(self.tls.certPath))

    def _hangUp(self) -> None:
        self.reopenLogs()
        self.reloadCertificate()
        if self.workers is not None:
            self.workers.hangUp()

    def _installSignalHandler(self) -> None:
        sighup = getattr(signal, "SIGHUP", None)
        if sighup is None or not hasattr(self.reactor, "callFromThread"):
            return
        try:
            signal.signal(sighup, lambda *_: self.reactor.callFromThread(self._hangUp))
        except ValueError:
            pass  # not the main thread (tests): no signal handling

    def ports(self) -> Dict[str, int]:
        """The bound port of each role's first listener (for tests and logs)."""
        return {
            role: listeners[0].port.getHost().port  # type: ignore[attr-defined]
            for role, listeners in self.listeners.items()
            if listeners and listeners[0].port is not None
        }
