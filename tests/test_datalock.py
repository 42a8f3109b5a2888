"""
Tests for L{mailnet.datalock}: one daemon per data dir (issue 15 item 14).
"""

import errno
import os
import time
import sqlite3
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from mailnet.config import loadConfig
from mailnet.datalock import LOCK_NAME, DataDirLock
from mailnet.errors import ConfigError
from mailnet.service import MailService, dataDirProblem
from tests.test_service import ThreadedMemoryReactor


class DataDirLockTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dataDir = os.path.abspath(self.mktemp())
        os.makedirs(self.dataDir)

    def test_secondRefused(self) -> None:
        first = DataDirLock(self.dataDir)
        first.acquire()
        self.addCleanup(first.release)
        error = self.assertRaises(ConfigError, DataDirLock(self.dataDir).acquire)
        self.assertIn("another mailnet (pid %d) is already running on it" % (os.getpid(),), str(error))
        self.assertIn("--data-dir", str(error))

    def test_exclusively(self) -> None:
        """Held for the with block (another open cannot take it), free after it, the file left in place."""
        from mailnet.datalock import _tryLock, exclusively

        path = os.path.join(self.dataDir, "some.lock")
        with exclusively(path):
            fd = os.open(path, os.O_RDWR)
            self.addCleanup(os.close, fd)
            self.assertFalse(_tryLock(fd))
        self.assertTrue(_tryLock(fd))
        self.assertTrue(os.path.exists(path))

    def test_releasedThenFree(self) -> None:
        first = DataDirLock(self.dataDir)
        first.acquire()
        first.release()
        second = DataDirLock(self.dataDir)
        second.acquire()
        self.assertTrue(second.held)
        second.release()

    def test_deadProcessLeavesNothingStale(self) -> None:
        """A process that held the lock and died (kill -9, crash): the lock is free."""
        code = (
            "import sys; sys.path.insert(0, %r); from mailnet.datalock import DataDirLock; "
            "DataDirLock(%r).acquire(); import os; os._exit(0)"
        ) % (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), self.dataDir)
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
        self.assertTrue(os.path.exists(os.path.join(self.dataDir, LOCK_NAME)))
        lock = DataDirLock(self.dataDir)
        lock.acquire()
        lock.release()


class TwoDaemonsTests(SynchronousTestCase):
    def service(self, dataDir: str) -> MailService:
        config = loadConfig(None, {"server.data_dir": dataDir, "server.hostname": "mx.example.test",
                                   "server.domain": ("example.test",)})
        return MailService(config, ThreadedMemoryReactor(), handleSignals=False)

    def test_secondDaemonRefusesToStart(self) -> None:
        """Two daemons on one data dir: the second stops at start-up (exit 1)."""
        dataDir = os.path.abspath(self.mktemp())
        first = self.service(dataDir)
        first.privilegedStartService()
        first.startService()
        self.addCleanup(first.stopService)
        second = self.service(dataDir)
        second.privilegedStartService()
        error = self.assertRaises(SystemExit, second.startService)
        self.assertEqual(error.code, 1)
        self.assertFalse(second.running)
        messages = [e for e in self.flushLoggedErrors()]  # nothing logged as a traceback
        self.assertEqual(messages, [])

    def test_stopReleases(self) -> None:
        dataDir = os.path.abspath(self.mktemp())
        first = self.service(dataDir)
        first.privilegedStartService()
        first.startService()
        stopped = first.stopService()
        # Worker pools stop in threads of their own and report back through
        # callFromThread: run what they hand back until the service stopped.
        done: list = []
        stopped.addBoth(done.append)
        deadline = time.monotonic() + 30
        while not done and time.monotonic() < deadline:
            while first.reactor.fromThreads:
                f, args, kwargs = first.reactor.fromThreads.pop(0)
                f(*args, **kwargs)
            time.sleep(0.01)
        self.assertEqual(len(done), 1)
        second = self.service(dataDir)
        second.privilegedStartService()
        second.startService()
        self.addCleanup(second.stopService)
        self.assertTrue(second.dataLock.held)


class DataDirProblemTests(SynchronousTestCase):
    """EPERM, ENOSPC at start-up: one line saying what to do (issue 15 item 13)."""

    def test_permission(self) -> None:
        text = dataDirProblem(PermissionError(errno.EACCES, "Permission denied", "/var/lib/mailnet/accounts.sqlite3"))
        self.assertIn("permission denied on /var/lib/mailnet/accounts.sqlite3", text)
        self.assertIn("run mailnet as the user who owns the data dir", text)

    def test_noSpace(self) -> None:
        text = dataDirProblem(OSError(errno.ENOSPC, "No space left on device", "/d/tls/selfsigned.pem"))
        self.assertIn("no space left", text)
        self.assertIn("free some space", text)

    def test_sqlite(self) -> None:
        self.assertIn("account store cannot be opened", dataDirProblem(sqlite3.OperationalError("unable to open database file")))

    def test_startServiceSaysIt(self) -> None:
        """An unreadable account store: exit 1 and one line, no traceback."""
        dataDir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(dataDir, "accounts.sqlite3"))  # a directory where the database should be
        config = loadConfig(None, {"server.data_dir": dataDir, "server.hostname": "mx.example.test"})
        service = MailService(config, ThreadedMemoryReactor(), handleSignals=False)
        service.privilegedStartService()
        events = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        error = self.assertRaises(SystemExit, service.startService)
        self.assertEqual(error.code, 1)
        critical = [e for e in events if e.get("log_level") is not None and e["log_level"].name == "critical"]
        self.assertEqual(len(critical), 1)
        self.assertRegex(critical[0]["error"], "account store")
        self.assertTrue(critical[0]["log_format"].startswith("mailnet: error: "))
        self.assertFalse(any("log_failure" in e for e in events))


class CheckoutTests(SynchronousTestCase):
    def test_pidFileIgnored(self) -> None:
        """The quick start (twistd without --pidfile=) leaves no untracked file (issue 15 item 17)."""
        top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(top, ".gitignore")) as f:
            ignored = f.read().split()
        self.assertIn("twistd.pid", ignored)


class LockFileProblemTests(SynchronousTestCase):
    def test_cannotCreateLockFile(self) -> None:
        """EACCES creating the lock file: start-up says what to do, in one line."""
        import mailnet.datalock

        def refuse(path, flags, mode=0o777):
            raise PermissionError(errno.EACCES, "Permission denied", path)

        dataDir = os.path.abspath(self.mktemp())
        config = loadConfig(None, {"server.data_dir": dataDir, "server.hostname": "mx.example.test"})
        service = MailService(config, ThreadedMemoryReactor(), handleSignals=False)
        service.privilegedStartService()
        self.patch(mailnet.datalock.os, "open", refuse)
        events = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.assertRaises(SystemExit, service.startService)
        [critical] = [e for e in events if e.get("log_level") is not None and e["log_level"].name == "critical"]
        self.assertIn("permission denied on %s" % (os.path.join(dataDir, LOCK_NAME),), critical["error"])
        self.assertIn("run mailnet as the user who owns the data dir", critical["error"])
