# -*- test-case-name: tests.test_service -*-
"""
Tests for L{mailnet.service}: how the parts are assembled, and the order of
start-up that lets C{twistd --uid} bind privileged ports and then create
files as the service user.
"""

import io
import os
import threading

from twisted.internet.defer import fail, succeed
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher, textFileLogObserver
from twisted.trial.unittest import SynchronousTestCase

from mailnet import cred, logtext
from mailnet.config import LISTENERS, loadConfig
from mailnet.cred import CHECKS_PER_HASHING_THREAD, hashingThreads
from mailnet.errors import ConfigError
from mailnet.service import MailService, TmpSweeperService
from mailnet.interfaces import IMailbox
from mailnet.testing import makeCertificate


class ThreadedMemoryReactor(MemoryReactorClock):
    """
    A memory reactor that keeps what worker threads hand back (the relay
    queue loads in a thread) instead of running it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fromThreads: list = []

    def callFromThread(self, f, *args, **kwargs) -> None:
        self.fromThreads.append((f, args, kwargs))


class RefusingReactor(ThreadedMemoryReactor):
    def listenTCP(self, port, factory, backlog=50, interface=""):
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


class MailServiceTests(SynchronousTestCase):
    def config(self, **settings):
        self.dataDir = os.path.abspath(self.mktemp())
        base = {"server.data_dir": self.dataDir, "server.hostname": "mx.example.test", "server.domain": ("example.test",)}
        base.update(settings)
        return loadConfig(None, base)

    def start(self, service: MailService) -> None:
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)

    def test_constructionCreatesNoFiles(self) -> None:
        """
        Building the service touches nothing on disk: with twistd --uid the
        files must be created after privileges are dropped.
        """
        MailService(self.config(), ThreadedMemoryReactor(), handleSignals=False)
        self.assertFalse(os.path.exists(self.dataDir))

    def test_hashingPool(self) -> None:
        """
        Issue 11: passwords are checked on a small pool of their own, not
        on the pool that syncs Maildirs, and the authenticator admits no
        more checks at once than that pool can work off quickly.
        """
        reactor = ThreadedMemoryReactor()
        service = MailService(self.config(), reactor, handleSignals=False)
        pool = service.hashPool
        self.assertEqual(pool.name, "mailnet-hash")
        self.assertEqual(pool.max, hashingThreads())
        self.assertEqual(service.authenticator.maxChecking, CHECKS_PER_HASHING_THREAD * pool.max)
        self.assertEqual(service.authenticator.maxSuspectChecking, max(1, pool.max // 2))
        checked = threading.Event()
        names = []

        def verify(*args):
            names.append(threading.current_thread().name)
            checked.set()
            return False

        self.patch(cred, "verifyPassword", verify)
        os.makedirs(self.dataDir)
        service.accounts.open()
        pool.start()
        self.addCleanup(pool.stop)
        service.authenticator.login(UsernamePassword(b"alice@example.test", b"x"), "192.0.2.1", IMailbox)
        self.assertTrue(checked.wait(10))
        self.assertEqual(len(names), 1)
        self.assertEqual(names, ["PoolThread-mailnet-hash-0"])

    def test_loginCache(self) -> None:
        """
        Issue 14: successful logins are remembered on the reactor's clock
        for C{[limits] login_cache_ttl} seconds; 0 turns that off.
        """
        reactor = ThreadedMemoryReactor()
        service = MailService(self.config(), reactor, handleSignals=False)
        cache = service.authenticator.portal.checkers[IUsernamePassword].cache
        self.assertEqual(cache.ttl, 600)
        self.assertIs(cache._clock, reactor)
        service = MailService(self.config(**{"limits.login_cache_ttl": 0}), reactor, handleSignals=False)
        self.assertIsNone(service.authenticator.portal.checkers[IUsernamePassword].cache)

    def test_hashingThreads(self) -> None:
        """One thread per CPU, four at most."""
        self.assertEqual([hashingThreads(n) for n in (1, 2, 3, 8, 64)], [1, 2, 3, 4, 4])

    def test_startPreparesDataDir(self) -> None:
        reactor = ThreadedMemoryReactor()
        service = MailService(self.config(), reactor, handleSignals=False)
        self.start(service)
        self.assertTrue(os.path.isfile(os.path.join(self.dataDir, "accounts.sqlite3")))
        self.assertTrue(os.path.isfile(os.path.join(self.dataDir, "tls", "selfsigned.pem")))
        self.assertTrue(service.certificateGenerated)
        self.assertEqual(service.accounts.domains(), ["example.test"])
        # One listener per role, all on the configured interface.
        self.assertEqual(sorted(service.listeners), sorted(LISTENERS))
        self.assertEqual(len(reactor.tcpServers), len(LISTENERS))
        self.assertEqual({interface for _, _, _, interface in reactor.tcpServers}, {"127.0.0.1"})

    def test_oneConnectionBudget(self) -> None:
        """
        Issue 11 item 4: every listener draws from one connection budget
        (max_connections), with max_connections_per_client per address.
        """
        service = MailService(
            self.config(**{"limits.max_connections": 300, "limits.max_connections_per_client": 7}),
            ThreadedMemoryReactor(),
            handleSignals=False,
        )
        factories = [listener.factory for listeners in service.listeners.values() for listener in listeners]
        self.assertEqual(len(factories), len(LISTENERS))
        self.assertEqual({id(f.limiter) for f in factories}, {id(service.limiter)})
        self.assertEqual((service.limiter.maxConnections, service.limiter.maxPerClient), (300, 7))

    def test_listenersTurnedOff(self) -> None:
        reactor = ThreadedMemoryReactor()
        service = MailService(
            self.config(**{"listen.pop3": (), "listen.smtps": (), "listen.imaps": (), "listen.http": ()}), reactor, handleSignals=False
        )
        self.start(service)
        self.assertEqual(sorted(service.listeners), ["imap", "pop3s", "smtp", "submission"])

    def test_unusableDataDir(self) -> None:
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("a file, not a directory")
        config = self.config(**{"server.data_dir": os.path.join(blocker, "data")})
        service = MailService(config, ThreadedMemoryReactor(), handleSignals=False)
        service.privilegedStartService()
        error = self.assertRaises(SystemExit, service.startService)
        self.assertEqual(error.code, 1)

    def test_portInUse(self) -> None:
        service = MailService(self.config(), RefusingReactor(), handleSignals=False)
        error = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(error.code, 1)

    def test_badEndpoint(self) -> None:
        error = self.assertRaises(
            ConfigError, MailService, self.config(**{"listen.smtp": ("carrier-pigeon:25",)}), ThreadedMemoryReactor()
        )
        self.assertIn("carrier-pigeon", str(error))

    def test_configuredCertificateReadAtOnce(self) -> None:
        """
        A configured certificate is read while building the service (still
        as root, for root-only keys), and a bad one is reported then.
        """
        cert, key = makeCertificate()
        service = MailService(self.config(**{"tls.cert": cert, "tls.key": key}), ThreadedMemoryReactor(), handleSignals=False)
        self.assertIsNotNone(service.tls.getContext())
        _, otherKey = makeCertificate()
        self.assertRaises(
            ConfigError, MailService, self.config(**{"tls.cert": cert, "tls.key": otherKey}), ThreadedMemoryReactor()
        )

    def test_reloadCertificate(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        cert, key = makeCertificate(directory)
        service = MailService(self.config(**{"tls.cert": cert, "tls.key": key}), ThreadedMemoryReactor(), handleSignals=False)
        before = service.tls.getContext()
        makeCertificate(directory)
        service.reloadCertificate()
        self.assertIsNot(service.tls.getContext(), before)
        # A broken renewal keeps the old certificate in use.
        current = service.tls.getContext()
        with open(cert, "w") as f:
            f.write("half-written")
        service.reloadCertificate()
        self.assertIs(service.tls.getContext(), current)

    def test_jsonLog(self) -> None:
        path = os.path.abspath(self.mktemp())
        service = MailService(self.config(**{"server.log_json": path}), ThreadedMemoryReactor(), handleSignals=False)
        self.start(service)
        with open(path) as f:
            self.assertIn("local domains", f.read())

    def test_fasterTextLog(self) -> None:
        """
        Once started, the text log twistd set up (Twisted's text observer
        on the global publisher) formats with L{mailnet.logtext}: the same
        lines, cheaper per message.
        """
        observer = textFileLogObserver(io.StringIO())
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.start(MailService(self.config(), ThreadedMemoryReactor(), handleSignals=False))
        self.assertIs(observer.formatEvent, logtext.formatEventAsText)


class TmpSweeperServiceTests(SynchronousTestCase):
    """
    Issue 11 item 12: stale tmp/ files are swept at start and daily, the
    sweep itself off the reactor (L{MaildirStore.sweepTmp} runs in the pool).
    """

    def test_sweepsAtStartAndDaily(self) -> None:
        calls = []

        class Store:
            def sweepTmp(self):
                calls.append(clock.seconds())
                return succeed(3)

        clock = Clock()
        sweeper = TmpSweeperService(Store(), clock)
        sweeper.startService()
        self.assertEqual(calls, [0])
        clock.advance(86399)
        self.assertEqual(calls, [0])
        clock.advance(1)
        self.assertEqual(calls, [0, 86400])
        sweeper.stopService()
        clock.advance(86400)
        self.assertEqual(len(calls), 2)

    def test_failureDoesNotStopTheLoop(self) -> None:
        calls = []

        class Store:
            def sweepTmp(self):
                calls.append(1)
                return fail(OSError(13, "Permission denied"))

        clock = Clock()
        sweeper = TmpSweeperService(Store(), clock)
        sweeper.startService()
        clock.advance(86400)
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)
        sweeper.stopService()

    def test_partOfTheMailService(self) -> None:
        dataDir = os.path.abspath(self.mktemp())
        config = loadConfig(None, {"server.data_dir": dataDir, "server.hostname": "mx.example.test"})
        service = MailService(config, ThreadedMemoryReactor(), handleSignals=False)
        [sweeper] = [s for s in service if isinstance(s, TmpSweeperService)]
        self.assertIs(sweeper.mailStore, service.mailStore)
