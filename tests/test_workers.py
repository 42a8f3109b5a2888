# -*- test-case-name: tests.test_workers -*-
"""
Tests for L{mailnet.workers}: C{[server] workers}, several processes
sharing the listeners, one of them owning the relay queue.
"""

import io
import os
import pickle
import poplib
import signal
import smtplib

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailnet.config import loadConfig
from mailnet.errors import ConfigError
from mailnet.limits import ConnectionLimiter
from mailnet.workers import (
    BALANCE_PAUSE,
    BALANCE_SLACK,
    RESTART_FIRST,
    RESTART_MAX,
    Balancer,
    Inherited,
    LoadTable,
    WorkerLogObserver,
    WorkerPool,
    acceptOneAtATime,
    balance,
    checkPlatform,
    connectionShare,
    resolveWorkers,
)
from tests.support import startServer


class SettingTests(SynchronousTestCase):
    def test_number(self) -> None:
        self.assertEqual(resolveWorkers(" 3 "), 3)

    def test_auto(self) -> None:
        """C{auto} is one process per CPU."""
        self.assertEqual(resolveWorkers("Auto", cpus=6), 6)

    def test_bad(self) -> None:
        for text in ("0", "-1", "two", ""):
            self.assertRaises(ValueError, resolveWorkers, text)

    def test_config(self) -> None:
        """The ini key reaches L{Config.workers}; the default is one process."""
        self.assertEqual(loadConfig(None, {}).workers, 1)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[server]\nworkers = 4\n")
        self.assertEqual(loadConfig(path).workers, 4)

    def test_windows(self) -> None:
        """Several workers need POSIX; one is fine anywhere."""
        checkPlatform(1, "nt")
        checkPlatform(4, "posix")
        error = self.assertRaises(ConfigError, checkPlatform, 2, "nt")
        self.assertIn("set workers = 1", str(error))

    def test_connectionShare(self) -> None:
        """The connection budget divides among the processes, rounded up."""
        self.assertEqual(connectionShare(1000, 1), 1000)
        self.assertEqual(connectionShare(1000, 3), 334)
        self.assertEqual(connectionShare(1, 4), 1)

    def test_inheritedDescriptor(self) -> None:
        inherited = Inherited(1, 2, (("smtp", "tcp:25", 4), ("pop3", "tcp:110", 5)))
        self.assertEqual(inherited.descriptor("pop3", "tcp:110"), 5)
        self.assertRaises(ConfigError, inherited.descriptor, "imap", "tcp:143")


class AcceptTests(TestCase):
    @inlineCallbacks
    def test_oneAtATime(self):
        """
        A shared port takes one connection per readiness event, so that a
        burst is spread over the processes (Twisted would take them all).
        """
        from twisted.internet.protocol import ClientFactory, Factory, Protocol

        accepted: list = []

        class Count(Protocol):
            def connectionMade(self) -> None:
                accepted.append(self)

        port = reactor.listenTCP(0, Factory.forProtocol(Count), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        port.stopReading()
        acceptOneAtATime(port)
        clients = []
        for _ in range(5):
            clients.append(reactor.connectTCP("127.0.0.1", port.getHost().port, ClientFactory.forProtocol(Protocol)))
        self.addCleanup(lambda: [c.disconnect() for c in clients])
        for _ in range(100):
            yield task.deferLater(reactor, 0.01, lambda: None)
            if all(c.state == "connected" for c in clients):
                break
        port.numberAccepts = 100
        port.doRead()
        self.assertEqual(len(accepted), 1)
        port.doRead()
        self.assertEqual(len(accepted), 2)
        for p in accepted:
            p.transport.loseConnection()


class Backlog:
    """A listening socket's queue of connections, shared by fake ports."""

    def __init__(self, waiting: int = 0) -> None:
        self.waiting = waiting


class FakePort:
    """
    A listening port of one process, on a shared L{Backlog}: each
    C{doRead} accepts one waiting connection, which its process's limiter
    admits.
    """

    connected = True
    disconnecting = False
    numberAccepts = 100

    def __init__(self, backlog: Backlog, limiter: ConnectionLimiter) -> None:
        self.backlog = backlog
        self.limiter = limiter
        self.reading = True
        self.accepted = 0

    def doRead(self) -> None:
        if self.backlog.waiting:
            self.backlog.waiting -= 1
            self.accepted += 1
            self.limiter.admit("192.0.2.%d" % (self.accepted,))

    def startReading(self) -> None:
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False

    def fileno(self) -> int:
        return 99


class FakeListener:
    description = "tcp:110"

    def __init__(self, port) -> None:
        self.port = port


class LoadMail:
    """What L{balance} needs of a L{MailService}: a limiter and its listeners."""

    def __init__(self, backlog: Backlog) -> None:
        self.limiter = ConnectionLimiter(100, 100)
        self.port = FakePort(backlog, self.limiter)
        self.listeners = {"pop3": [FakeListener(self.port), FakeListener(None)]}


class LoadTableTests(SynchronousTestCase):
    def table(self, processes: int) -> LoadTable:
        table = LoadTable.create(processes)
        self.addCleanup(table.close)
        return table

    def test_slots(self) -> None:
        """Each process has a slot; a process not serving has none in use."""
        table = self.table(3)
        self.assertEqual([table.get(i) for i in range(3)], [None, None, None])
        self.assertIsNone(table.least())
        table.set(0, 4)
        table.set(2, 0)
        self.assertEqual([table.get(i) for i in range(3)], [4, None, 0])
        self.assertEqual(table.least(), 0)
        table.set(2, None)
        self.assertEqual(table.least(), 4)

    def test_shared(self) -> None:
        """Another mapping of the file (a worker's, from the descriptor) sees the same slots."""
        table = self.table(2)
        other = LoadTable(os.dup(table.fileno()), 2)
        self.addCleanup(other.close)
        table.set(0, 7)
        other.set(1, 2)
        self.assertEqual((other.get(0), table.get(1)), (7, 2))


class BalanceTests(SynchronousTestCase):
    """
    Two processes (0 and 1) sharing one listening socket, with fake ports
    and a fake clock.
    """

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.table = LoadTable.create(2)
        self.addCleanup(self.table.close)
        self.backlog = Backlog()
        self.mails = [LoadMail(self.backlog), LoadMail(self.backlog)]
        self.balancers = [balance(mail, self.table, i, self.clock) for i, mail in enumerate(self.mails)]

    def test_published(self) -> None:
        """Each process's slot follows its limiter's count, both ways."""
        self.assertEqual((self.table.get(0), self.table.get(1)), (0, 0))
        self.mails[0].limiter.admit("192.0.2.1")
        self.mails[0].limiter.admit("192.0.2.2")
        self.assertEqual(self.table.get(0), 2)
        self.mails[0].limiter.release("192.0.2.1")
        self.assertEqual(self.table.get(0), 1)

    def test_loadedDefers(self) -> None:
        """
        A process with more than the slack over the other leaves a new
        connection alone; the idle one takes it; then after the pause the
        loaded one reads its port again and finds nothing to accept.
        """
        loaded, idle = self.mails
        for n in range(BALANCE_SLACK + 1):
            loaded.limiter.admit("192.0.2.%d" % (100 + n,))
        self.backlog.waiting = 1
        loaded.port.doRead()
        self.assertEqual((loaded.port.accepted, loaded.port.reading, self.backlog.waiting), (0, False, 1))
        self.assertEqual(self.balancers[0].deferred, 1)
        idle.port.doRead()
        self.assertEqual((idle.port.accepted, self.backlog.waiting), (1, 0))
        self.clock.advance(BALANCE_PAUSE)
        self.assertEqual((loaded.port.accepted, loaded.port.reading), (0, True))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_withinSlack(self) -> None:
        """Up to the slack over the least loaded, a process accepts at once."""
        loaded, idle = self.mails
        for n in range(BALANCE_SLACK):
            loaded.limiter.admit("192.0.2.%d" % (100 + n,))
        self.backlog.waiting = 1
        loaded.port.doRead()
        self.assertEqual(loaded.port.accepted, 1)
        self.assertEqual(self.balancers[0].deferred, 0)

    def test_neverStarves(self) -> None:
        """If nobody took the connection during the pause, the loaded process accepts it."""
        loaded, idle = self.mails
        for n in range(BALANCE_SLACK + 1):
            loaded.limiter.admit("192.0.2.%d" % (100 + n,))
        self.backlog.waiting = 1
        loaded.port.doRead()
        self.clock.advance(BALANCE_PAUSE - 0.0001)
        self.assertEqual(loaded.port.accepted, 0)
        self.clock.advance(0.0001)
        self.assertEqual((loaded.port.accepted, loaded.port.reading, self.backlog.waiting), (1, True, 0))

    def test_burstSpread(self) -> None:
        """
        Ten connections at once, woken in the worst order (the loaded
        process always first): they end up 6/4 at worst, not 10/0.
        """
        first, second = self.mails
        self.backlog.waiting = 10
        while self.backlog.waiting:
            if first.port.reading:
                first.port.doRead()
            second.port.doRead()
            self.clock.advance(BALANCE_PAUSE)
        self.assertLessEqual(abs(first.port.accepted - second.port.accepted), BALANCE_SLACK + 1)
        self.assertEqual(first.port.accepted + second.port.accepted, 10)

    def test_deadNotCounted(self) -> None:
        """A process that does not serve (slot cleared) takes nothing: the others accept at once."""
        loaded = self.mails[0]
        for n in range(5):
            loaded.limiter.admit("192.0.2.%d" % (100 + n,))
        self.table.set(1, None)
        self.backlog.waiting = 1
        loaded.port.doRead()
        self.assertEqual(loaded.port.accepted, 1)

    def test_stoppedDuringPause(self) -> None:
        """A port closed during the pause is not read again."""
        loaded = self.mails[0]
        for n in range(BALANCE_SLACK + 1):
            loaded.limiter.admit("192.0.2.%d" % (100 + n,))
        self.backlog.waiting = 1
        loaded.port.doRead()
        loaded.port.disconnecting = True
        self.clock.advance(BALANCE_PAUSE)
        self.assertEqual((loaded.port.accepted, loaded.port.reading), (0, False))
        loaded.port.doRead()
        loaded.port.disconnecting = False
        loaded.port.connected = False
        self.clock.advance(BALANCE_PAUSE)
        self.assertEqual((loaded.port.accepted, loaded.port.reading), (0, False))

    def test_onceOnly(self) -> None:
        """Balancing a port twice (a restarted service) wraps it once."""
        port = self.mails[0].port
        read = port.doRead
        self.balancers[0].install(port)
        self.assertIs(port.doRead, read)

    def test_oneProcess(self) -> None:
        """With one process, ports are left as they are."""
        table = LoadTable.create(1)
        self.addCleanup(table.close)
        port = FakePort(Backlog(), ConnectionLimiter(1, 1))
        read = port.doRead
        Balancer(table, 0, self.clock, lambda: 1000).install(port)
        self.assertEqual(port.doRead, read)


class FakeTransport:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.written: list = []
        self.signals: list = []

    def writeToChild(self, fd, data) -> None:
        self.written.append((fd, data))

    def closeChildFD(self, fd) -> None:
        pass

    def signalProcess(self, name) -> None:
        self.signals.append(name)


class SpawningClock(task.Clock):
    def __init__(self) -> None:
        super().__init__()
        self.spawned: list = []

    def spawnProcess(self, protocol, executable, args, env, childFDs):
        transport = FakeTransport(1000 + len(self.spawned))
        protocol.makeConnection(transport)
        self.spawned.append((protocol, args, childFDs))
        return transport


class FakeQueue:
    def __init__(self) -> None:
        self.heard: list = []
        self.listener = self.heard.append
        self.entries: dict = {}

    def readEntry(self, entryId):
        from twisted.internet.defer import succeed

        return succeed(self.entries.get(entryId))

    def readEntries(self):
        from twisted.internet.defer import succeed

        return succeed(list(self.entries.values()))


class FakeEntry:
    def __init__(self, id: str) -> None:
        self.id = id


class FakeMail:
    def __init__(self) -> None:
        self.config = loadConfig(None, {"server.hostname": "mx.example.test"})
        self.listeners: dict = {}
        self.queue = FakeQueue()
        self.relay = None


class PoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = SpawningClock()
        self.mail = FakeMail()
        self.pool = WorkerPool(self.mail, 3, self.clock, executable="/bin/python")
        self.addCleanup(lambda: self.pool.table is not None and self.pool.table.close())
        self.events: list = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def test_startsTheOthers(self) -> None:
        """C{workers = 3}: the parent starts two workers, given their boot data on stdin."""
        self.pool.startService()
        self.assertEqual(sorted(self.pool.processes), [1, 2])
        protocol, args, childFDs = self.clock.spawned[0]
        self.assertEqual(args, ["/bin/python", "-m", "mailnet.workers"])
        self.assertEqual(childFDs[0], "w")
        self.assertEqual(protocol.transport.written[0][0], 0)

    def test_loadTable(self) -> None:
        """
        The parent balances its own ports, passes the load table to each
        worker, clears a worker's slot when it ends and again when it
        starts (the worker sets it once it serves).
        """
        backlog = Backlog()
        parent = LoadMail(backlog)
        self.mail.limiter = parent.limiter
        self.mail.listeners = parent.listeners
        self.pool.startService()
        table = self.pool.table
        self.assertEqual([table.get(i) for i in range(3)], [0, None, None])
        self.assertTrue(parent.port.mailnetBalanced)
        protocol, args, childFDs = self.clock.spawned[0]
        inherited = pickle.loads(protocol.transport.written[0][1])["inherited"]
        self.assertEqual(childFDs[inherited.loadFD], table.fileno())
        self.assertEqual(inherited.processes, 3)
        worker = LoadTable(os.dup(childFDs[inherited.loadFD]), 3)
        self.addCleanup(worker.close)
        worker.set(1, 5)
        worker.set(2, 0)
        self.assertEqual(table.least(), 0)
        self.pool.processes[2].processEnded(Failure(ProcessTerminated(exitCode=1)))
        self.assertEqual([table.get(i) for i in range(3)], [0, 5, None])
        self.assertEqual(table.least(), 0)
        worker.set(2, 3)  # (a stale write, say)
        self.clock.advance(RESTART_FIRST)
        self.assertIn(2, self.pool.processes)
        self.assertIsNone(table.get(2))

    def test_restartWithBackoff(self) -> None:
        """A worker that dies is started again, later each time it keeps dying."""
        self.pool.startService()
        died = Failure(ProcessTerminated(signal=signal.SIGKILL))
        for delay in (RESTART_FIRST, RESTART_FIRST * 2, RESTART_FIRST * 4):
            worker = self.pool.processes[1]
            worker.processEnded(died)
            self.assertNotIn(1, self.pool.processes)
            self.clock.advance(delay - 0.01)
            self.assertNotIn(1, self.pool.processes)
            self.clock.advance(0.01)
            self.assertIn(1, self.pool.processes)
        self.assertTrue(any("starting it again" in e.get("log_format", "") for e in self.events))
        for _ in range(10):
            self.pool.processes[1].processEnded(died)
            self.clock.advance(RESTART_MAX)
        self.assertIn(1, self.pool.processes)

    def test_deathRescans(self) -> None:
        """When a worker dies, the parent takes on what it queued without telling."""
        self.pool.startService()
        self.mail.queue.entries["Q1"] = FakeEntry("Q1")
        self.pool.processes[2].processEnded(Failure(ProcessTerminated(exitCode=1)))
        self.assertEqual([e.id for e in self.mail.queue.heard], ["Q1"])

    def test_queuedNotice(self) -> None:
        """A worker's notice of a queued message reaches the relay queue's listener."""
        self.pool.startService()
        self.mail.queue.entries["Q2"] = FakeEntry("Q2")
        worker = self.pool.processes[1]
        worker.childDataReceived(3, b"Q")
        self.assertEqual(self.mail.queue.heard, [])
        worker.childDataReceived(3, b"2\nnone\n")
        self.assertEqual([e.id for e in self.mail.queue.heard], ["Q2"])

    def test_workerLogs(self) -> None:
        """A worker's log lines are published again, under its namespace."""
        out = io.StringIO()
        WorkerLogObserver(out)({"log_format": "hello {who}", "who": "you", "log_namespace": "mailnet.x",
                                "log_level": LogLevel.warn, "log_time": 1234.5})
        try:
            raise ZeroDivisionError("example")
        except ZeroDivisionError:
            WorkerLogObserver(out)({"log_format": "oops", "log_failure": Failure(), "log_time": 1.0})
        self.pool.startService()
        worker = self.pool.processes[1]
        worker.childDataReceived(1, out.getvalue().encode("utf-8") + b"not json\n")
        worker.childDataReceived(2, b"Traceback (most recent call last):\n")
        mine = [e for e in self.events if e.get("mailnet_worker") == 1]
        self.assertEqual(mine[0]["log_namespace"], "worker-1/mailnet.x")
        self.assertEqual(mine[0]["log_level"], LogLevel.warn)
        self.assertEqual(mine[0]["log_time"], 1234.5)
        self.assertEqual(formatEvent(mine[0]), "hello you")
        self.assertIn("ZeroDivisionError", formatEvent(mine[1]))
        self.assertEqual(formatEvent(mine[2]), "not json")
        self.assertEqual((formatEvent(mine[3]), mine[3]["log_level"]), ("Traceback (most recent call last):", LogLevel.warn))

    def test_signals(self) -> None:
        """SIGHUP is passed on; stopping sends SIGTERM and waits for the workers."""
        self.pool.startService()
        self.pool.hangUp()
        transports = [p.transport for p in self.pool.processes.values()]
        self.assertEqual([t.signals for t in transports], [["HUP"], ["HUP"]])
        d = self.pool.stopService()
        self.assertNoResult(d)
        self.assertEqual([t.signals for t in transports], [["HUP", "TERM"], ["HUP", "TERM"]])
        for worker in list(self.pool.processes.values()):
            worker.processEnded(Failure(ProcessDone(0)))
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class TwoProcessTests(TestCase):
    """
    C{workers = 2} for real: the parent and one worker on 127.0.0.1.
    """

    timeout = 30

    @inlineCallbacks
    def setUp(self):
        self.b = yield startServer(self, domains=("b.test",), listeners=("smtp",))
        self.b.addUser("bob@b.test", "bob-secret")
        ready: Deferred = Deferred()
        listening: list = []

        def observe(event) -> None:
            if event.get("mailnet_worker") == 1 and " listening on " in formatEvent(event):
                listening.append(event)
                if len(listening) == 3 and not ready.called:
                    ready.callback(None)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.server = yield startServer(
            self,
            listeners=("smtp", "submission", "pop3"),
            routes={"b.test": ("127.0.0.1", self.b.ports["smtp"])},
            **{"server.workers": 2, "tls.allow_plaintext_auth": True},
        )
        self.server.addUser("alice@example.test", "alice-secret")
        yield ready.addTimeout(20, reactor)
        [self.worker] = self.server.service.workers.processes.values()

    def send(self, count: int) -> None:
        for n in range(count):
            client = smtplib.SMTP("127.0.0.1", self.server.ports["smtp"], timeout=10)
            client.sendmail("x@remote.test", ["alice@example.test"], b"Subject: %d\r\n\r\nbody\r\n" % (n,))
            client.quit()

    def pop3Count(self) -> int:
        client = poplib.POP3("127.0.0.1", self.server.ports["pop3"], timeout=10)
        client.user("alice@example.test")
        client.pass_("alice-secret")
        count = client.stat()[0]
        client.quit()
        return count

    def relay(self) -> dict:
        client = smtplib.SMTP("127.0.0.1", self.server.ports["submission"], timeout=10)
        client.login("alice@example.test", "alice-secret")
        refused = client.sendmail("alice@example.test", ["bob@b.test"], b"Subject: out\r\n\r\nhello bob\r\n")
        client.quit()
        return refused

    def pids(self) -> set:
        return {os.path.basename(p).split("P")[1].split("Q")[0] for p in self.server.newFiles("alice@example.test")}

    @inlineCallbacks
    def test_loadShared(self):
        """
        The worker maps the parent's load table: its slot appears once it
        serves, and follows its connections.
        """
        table = self.server.service.workers.table
        for _ in range(400):
            if table.get(1) is not None:
                break
            yield task.deferLater(reactor, 0.025, lambda: None)
        self.assertEqual((table.get(0), table.get(1)), (0, 0))
        workerPid = self.worker.transport.pid
        parentPorts = [listener.port for listeners in self.server.service.listeners.values() for listener in listeners]
        for port in parentPorts:
            port.stopReading()
        try:
            client = yield deferToThread(poplib.POP3, "127.0.0.1", self.server.ports["pop3"], timeout=10)
            try:
                for _ in range(400):
                    if table.get(1) == 1:
                        break
                    yield task.deferLater(reactor, 0.025, lambda: None)
                self.assertEqual(table.get(1), 1)
            finally:
                yield deferToThread(client.quit)
        finally:
            for port in parentPorts:
                port.startReading()
        self.assertEqual(self.worker.transport.pid, workerPid)

    @inlineCallbacks
    def test_bothServe(self):
        """
        With the worker stopped, the parent serves; with the parent not
        accepting, the worker does (deliveries, a POP3 login, and a message
        for relaying, which the parent's relay queue then delivers).
        """
        parentPorts = [listener.port for listeners in self.server.service.listeners.values() for listener in listeners]
        workerPid = self.worker.transport.pid
        os.kill(workerPid, signal.SIGSTOP)
        try:
            yield deferToThread(self.send, 2)
        finally:
            os.kill(workerPid, signal.SIGCONT)
        self.assertEqual(self.pids(), {str(os.getpid())})
        for port in parentPorts:
            port.stopReading()
        try:
            yield deferToThread(self.send, 2)
            self.assertEqual((yield deferToThread(self.pop3Count)), 4)
            self.assertEqual((yield deferToThread(self.relay)), {})
        finally:
            for port in parentPorts:
                port.startReading()
        self.assertEqual(self.pids(), {str(os.getpid()), str(workerPid)})
        for _ in range(200):
            if self.b.newFiles("bob@b.test"):
                break
            yield task.deferLater(reactor, 0.025, lambda: None)
        [path] = self.b.newFiles("bob@b.test")
        with open(path, "rb") as f:
            self.assertTrue(f.read().endswith(b"\n\nhello bob\n"))
