# -*- test-case-name: tests.test_workers -*-
"""
Several reactor processes serving the same listeners (C{[server] workers}).

One Python process runs one reactor thread, and that thread is the limit
of a busy server (issue 14).  With C{workers = N} (or C{auto}: one per
CPU) the daemon runs N processes:

  - the I{parent} (the process C{twistd} started) binds every listener
    before the privilege drop, exactly as with one process, takes the
    data-dir lock, owns the relay queue and the C{tmp/} sweeper, and
    serves connections like any worker;
  - N-1 I{workers}, started by the parent after the drop with
    C{spawnProcess}, inherit the listening sockets as file descriptors
    (C{childFDs}) and adopt them (C{reactor.adoptStreamPort}).  The kernel
    hands each new connection to whichever process accepts it first; to
    spread them evenly, every process publishes its open connections in a
    shared L{LoadTable}, and one with more than the least loaded process
    (plus L{BALANCE_SLACK}) leaves a new connection to the others for
    L{BALANCE_PAUSE} seconds before it takes it (L{Balancer}).

Shared listening sockets were chosen over C{SO_REUSEPORT}: they work on
every POSIX system, keep ports below 1024 bindable by root only once, and
a worker that dies loses no connection waiting in its own accept queue.
Windows has no way to pass a socket to C{spawnProcess}: there, only
C{workers = 1}.

Whatever one process changes, the others see on disk: accounts (SQLite),
Maildirs (IMAP IDLE hears of them through L{mailnet.store.watch}) and the
relay queue.  A worker that queues a message for relaying writes its id,
once it is durable and before the client's 250, to a pipe that the parent
reads (L{WorkerPool.queued}); the parent also rescans the queue when a
worker dies and every L{RESCAN_INTERVAL} seconds, so nothing acknowledged
waits for a restart.

The workers log through the parent: each formats its events and writes
them as short JSON lines to its standard output, and the parent publishes
the text again under the namespace C{worker-I/...} (in the C{log_json}
file too, as text).  SIGHUP (certificate and log reload) and
SIGTERM (graceful stop) given to the parent reach every worker; a worker
that dies is started again after a pause that doubles from one second up
to a minute.  A worker whose parent is gone stops.

Per-process state stays per process: the failed-login throttling of
L{mailnet.cred.Authenticator}, and the connection budget: each process
gets C{max_connections} divided by the number of processes (rounded up),
while C{max_connections_per_client} applies in each process.
"""

import json
import mmap
import os
import pickle
import socket
import struct
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import attr
from twisted.application import service
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, InvalidLogLevelError, Logger, LogLevel, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from mailnet import logtext
from mailnet.errors import ConfigError

log = Logger()

#: The file descriptors of a worker: its log (JSON lines, to the parent),
#: the ids of messages it queued (to the parent), then the listeners.
LOG_FD = 1
STDERR_FD = 2
QUEUED_FD = 3
FIRST_LISTENER_FD = 4

#: How often (seconds) the parent looks for queue entries it was not told of.
RESCAN_INTERVAL = 30.0
#: Restart pauses (seconds) of a worker that keeps dying.
RESTART_FIRST = 1.0
RESTART_MAX = 60.0
#: A worker that ran this long is healthy: its next restart is quick again.
HEALTHY_AFTER = 60.0
#: How long stopping waits for the workers' graceful stop before SIGKILL.
STOP_GRACE = 15.0
#: How often (seconds) a worker checks that its parent still runs.
PARENT_CHECK = 1.0
#: The longest line a worker may write to the parent (a log event).
MAX_LINE = 1024 * 1024
#: A process with more open connections than the least loaded one plus
#: this many leaves a new connection to the others for a while...
BALANCE_SLACK = 1
#: ... this long (seconds), then takes it if it is still waiting.
BALANCE_PAUSE = 0.002


def resolveWorkers(text: str, cpus: Optional[int] = None) -> int:
    """
    Parse C{[server] workers}: a whole number above 0, or C{auto}.

    @raise ValueError: neither.
    """
    if text.strip().lower() == "auto":
        return max(1, cpus if cpus is not None else (os.cpu_count() or 1))
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError("expected a whole number above 0, or auto") from None
    if value <= 0:
        raise ValueError("expected a whole number above 0, or auto")
    return value


def checkPlatform(workers: int, osName: str = os.name) -> None:
    """
    @raise ConfigError: C{workers} above 1 where sockets cannot be passed
        to a child process.
    """
    if workers > 1 and osName != "posix":
        raise ConfigError(
            where="[server] workers",
            problem="several worker processes need a POSIX system (they share the listening sockets); set workers = 1",
        )


def connectionShare(limit: int, processes: int) -> int:
    """@return: one process's part of a connection budget of C{limit}."""
    return max(1, -(-limit // max(1, processes)))


@attr.s(frozen=True, auto_attribs=True)
class Inherited:
    """
    What a worker got from its parent.

    @ivar index: the worker's number, from 1 (the parent is 0).
    @ivar processes: how many processes serve (the parent included).
    @ivar listeners: C{(role, endpoint description, file descriptor)}.
    @ivar queuedFD: where to write the ids of queued messages, or L{None}.
    @ivar loadFD: the parent's L{LoadTable} file, or L{None}.
    """

    index: int
    processes: int
    listeners: Tuple[Tuple[str, str, int], ...]
    queuedFD: Optional[int] = QUEUED_FD
    loadFD: Optional[int] = None

    def descriptor(self, role: str, description: str) -> int:
        """
        @return: the inherited socket of a listener.
        @raise ConfigError: the parent passed none.
        """
        for r, d, fd in self.listeners:
            if (r, d) == (role, description):
                return fd
        raise ConfigError(where="listener %s (%s)" % (role, description), problem="not passed to this worker")

    def notifier(self) -> Callable[[Any], None]:
        """
        @return: a C{DiskQueue.listener} telling the parent of each new
            queue entry (a write of a few octets to a pipe; the parent
            also rescans, so a full pipe loses nothing).
        """
        fd = self.queuedFD

        def tell(entry: Any) -> None:
            if fd is None:
                return
            try:
                os.write(fd, entry.id.encode("ascii") + b"\n")
            except OSError as e:
                log.warn("could not tell the parent of queue entry {id}: {error}", id=entry.id, error=e)

        return tell


def acceptOneAtATime(port: Any) -> None:
    """
    Make C{port} accept one connection per readiness event, instead of
    Twisted's adaptive batch (up to hundreds): when several processes share
    a listening socket, a burst of connections (a client opening ten at
    once) is then spread over them rather than taken by whichever woke
    first.  Under a flood, the busiest process accepts least, as it comes
    back to the socket last.
    """
    doRead = getattr(port, "doRead", None)
    if doRead is None or not hasattr(port, "numberAccepts"):
        return

    def acceptOne() -> Any:
        port.numberAccepts = 1
        return doRead()

    port.doRead = acceptOne


class LoadTable:
    """
    The open connections of every process, in a small file all of them map
    (C{MAP_SHARED}): one signed 64-bit slot per process index (the parent
    is 0), holding 0 while the process does not serve (not started yet, or
    dead) and 1 + its open connections while it does.  Each process writes
    only its own slot; the parent also clears and sets a worker's slot when
    the worker ends and starts.  An aligned 8-octet store is not torn on the
    systems we run on, and a stale value only makes one accept less even.
    """

    _slot = struct.Struct("=q")
    #: The file, in the process that created it (L{create}).
    _file: Any = None

    def __init__(self, fd: int, processes: int) -> None:
        self.processes = processes
        self._all = struct.Struct("=%dq" % (processes,))
        self._map = mmap.mmap(fd, self._slot.size * processes)

    @classmethod
    def create(cls, processes: int) -> "LoadTable":
        """
        A new table, all slots cleared, in an unnamed temporary file (the
        workers inherit its descriptor, L{fileno}).
        """
        f = tempfile.TemporaryFile(prefix="mailnet-load-")
        f.truncate(cls._slot.size * processes)
        table = cls(f.fileno(), processes)
        table._file = f
        return table

    def fileno(self) -> int:
        """@return: the descriptor to pass on (of a table from L{create})."""
        return self._file.fileno()

    def set(self, index: int, connections: Optional[int]) -> None:
        """Process C{index} serves C{connections}, or is gone (L{None})."""
        value = 0 if connections is None else connections + 1
        self._slot.pack_into(self._map, index * self._slot.size, value)

    def get(self, index: int) -> Optional[int]:
        """@return: the connections of process C{index}; L{None} if it does not serve."""
        value = self._slot.unpack_from(self._map, index * self._slot.size)[0]
        return value - 1 if value > 0 else None

    def least(self) -> Optional[int]:
        """@return: the fewest connections of a serving process, or L{None}."""
        serving = [value for value in self._all.unpack_from(self._map) if value > 0]
        return min(serving) - 1 if serving else None

    def close(self) -> None:
        self._map.close()
        if self._file is not None:
            self._file.close()


class Balancer:
    """
    Least-connections balancing of the shared listening sockets.

    The kernel wakes every process waiting on a shared socket and the
    connection goes to whichever calls C{accept} first -- often the idle
    one, sometimes not: ten connections opened at once could land 9/1.  So
    a process with more than L{BALANCE_SLACK} connections over the least
    loaded serving process does not accept at once: it stops reading the
    port for L{BALANCE_PAUSE} seconds, leaving the connection to the
    others, then tries once (the others may be stuck or dead: nothing
    waits longer than the pause) and reads the port again.

    @ivar table: the shared L{LoadTable}.
    @ivar index: this process's slot.
    @ivar open: returns this process's open connections.
    """

    def __init__(self, table: LoadTable, index: int, clock: Any, open: Callable[[], int]) -> None:
        self.table = table
        self.index = index
        self.clock = clock
        self.open = open
        #: Connections left to the others, for tests and curious readers.
        self.deferred = 0

    def publish(self, connections: int) -> None:
        """This process now has C{connections} open (a limiter's watcher)."""
        self.table.set(self.index, connections)

    def overloaded(self) -> bool:
        """@return: whether a less loaded process should take the next connection."""
        least = self.table.least()
        return least is not None and self.open() > least + BALANCE_SLACK

    def install(self, port: Any) -> None:
        """Balance C{port} (a listening port; see L{acceptOneAtATime})."""
        doRead = getattr(port, "doRead", None)
        if doRead is None or self.table.processes < 2 or getattr(port, "mailnetBalanced", False):
            return
        port.mailnetBalanced = True
        clock = self.clock

        def resume() -> None:
            if not getattr(port, "connected", True) or getattr(port, "disconnecting", False):
                return  # stopped listening meanwhile
            port.startReading()
            doRead()  # nothing waiting: accept finds none (EAGAIN)

        def balancedRead() -> Any:
            if not self.overloaded():
                return doRead()
            self.deferred += 1
            port.stopReading()
            clock.callLater(BALANCE_PAUSE, resume)
            return None

        port.doRead = balancedRead


def balance(mail: Any, table: LoadTable, index: int, clock: Any) -> Optional[Balancer]:
    """
    Balance every listener of C{mail} (a L{mailnet.service.MailService})
    through C{table}: its limiter publishes this process's connections.
    """
    limiter = getattr(mail, "limiter", None)
    if limiter is None:
        return None
    balancer = Balancer(table, index, clock, lambda: limiter.open)
    limiter.watcher = balancer.publish
    balancer.publish(limiter.open)
    for services in mail.listeners.values():
        for listener in services:
            if listener.port is not None:
                balancer.install(listener.port)
    return balancer


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """
    A listening socket inherited from the parent.

    @param tlsContextFactory: for C{ssl:} endpoints, whose TLS the parent's
        port did; L{None} for plain ones.
    """

    def __init__(self, reactor: Any, fd: int, tlsContextFactory: Any = None) -> None:
        self.reactor = reactor
        self.fd = fd
        self.tlsContextFactory = tlsContextFactory

    def listen(self, factory: Any) -> Deferred:
        try:
            probe = socket.socket(fileno=self.fd)
            family = probe.family
            probe.detach()
            if self.tlsContextFactory is not None:
                factory = TLSMemoryBIOFactory(self.tlsContextFactory, False, factory)
                factory.noisy = False
            port = self.reactor.adoptStreamPort(self.fd, family, factory)
        except Exception:
            return fail()
        acceptOneAtATime(port)
        # The reactor has its own duplicate.
        os.close(self.fd)
        return succeed(port)


def adoptedEndpoint(reactor: Any, inherited: Inherited, role: str, description: str) -> AdoptedEndpoint:
    """The endpoint of one listener in a worker."""
    from twisted.internet.endpoints import serverFromString

    tls = None
    if description.startswith("ssl:"):
        tls = getattr(serverFromString(reactor, description), "_sslContextFactory", None)
    return AdoptedEndpoint(reactor, inherited.descriptor(role, description), tls)


# --- the parent ---------------------------------------------------------------


class _WorkerProcess(ProcessProtocol):
    """The parent's side of one worker: its log and its queue notices."""

    def __init__(self, pool: "WorkerPool", index: int) -> None:
        self.pool = pool
        self.index = index
        self.started = pool.reactor.seconds()
        self._buffers: Dict[int, bytes] = {LOG_FD: b"", STDERR_FD: b"", QUEUED_FD: b""}
        self.ended: Deferred = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD not in self._buffers:
            return
        lines = (self._buffers[childFD] + data).split(b"\n")
        rest = lines.pop()
        if len(rest) > MAX_LINE:
            rest = b""  # a runaway line: dropped
        self._buffers[childFD] = rest
        for line in lines:
            if childFD == QUEUED_FD:
                self.pool.queued(line.decode("ascii", "replace").strip())
            elif childFD == STDERR_FD:
                # What Python itself writes (a traceback at start-up).
                self._publish(time.time(), LogLevel.warn, "stderr", line.decode("utf-8", "replace"))
            else:
                self._relog(line)

    def _relog(self, line: bytes) -> None:
        # [time, level name, namespace, text] (see WorkerLogObserver)
        try:
            when, level, namespace, text = json.loads(line)
            logLevel = LogLevel.levelWithName(level)
            when = float(when)
        except (ValueError, TypeError, InvalidLogLevelError):
            when, logLevel, namespace, text = time.time(), LogLevel.info, "?", line.decode("utf-8", "replace")
        self._publish(when, logLevel, namespace, text)

    def _publish(self, when: float, logLevel: LogLevel, namespace: str, text: str) -> None:
        globalLogPublisher(
            {
                "log_format": "{log_text}",
                "log_text": text,
                "log_time": when,
                "log_level": logLevel,
                "log_namespace": "worker-%d/%s" % (self.index, namespace),
                "log_system": "worker-%d" % (self.index,),
                "mailnet_worker": self.index,
            }
        )

    def processEnded(self, reason: Any) -> None:
        self.pool.ended(self, reason)
        self.ended.callback(None)


class WorkerPool(service.Service):
    """
    Starts and watches the worker processes of a L{MailService} (the
    parent's own service).  Started after the listeners are bound.

    @ivar processes: index -> the running worker's L{_WorkerProcess}.
    @ivar table: the processes' open connections (L{LoadTable}), or L{None}
        if it could not be made (then the kernel alone spreads them).
    """

    def __init__(self, mail: Any, processes: int, reactor: Any, executable: str = sys.executable) -> None:
        self.mail = mail
        self.count = processes
        self.reactor = reactor
        self.executable = executable
        self.processes: Dict[int, _WorkerProcess] = {}
        self._failures: Dict[int, int] = {}
        self._restarts: Dict[int, Any] = {}
        self._stopping = False
        self._rescanner: Optional[LoopingCall] = None
        self.table: Optional[LoadTable] = None
        self.balancer: Optional[Balancer] = None

    def startService(self) -> None:
        service.Service.startService(self)
        self._stopping = False
        # After the relay service has read the queue: its start-up cleans
        # the queue's tmp/, where a worker might already be writing.
        relay = getattr(self.mail, "relay", None)
        loaded = getattr(relay, "_loaded", None)
        if isinstance(loaded, Deferred):
            # Started from a chain of its own: a failure to start a worker
            # must not end up in the relay queue's loading Deferred.
            done: Deferred = Deferred()
            done.addCallback(lambda _: self._startAll())

            def loadedNow(result: Any) -> Any:
                done.callback(None)
                return result

            loaded.addBoth(loadedNow)
        else:
            self._startAll()

    def _startAll(self) -> None:
        if self._stopping:
            return
        for services in self.mail.listeners.values():
            for listener in services:
                acceptOneAtATime(listener.port)
        if self.table is None:
            try:
                self.table = LoadTable.create(self.count)
            except (OSError, ValueError) as e:
                log.warn("cannot share connection counts with the workers ({error}): not balancing", error=e)
        if self.table is not None:
            self.balancer = balance(self.mail, self.table, 0, self.reactor)
        for index in range(1, self.count):
            self.spawn(index)
        self._rescanner = LoopingCall(self.rescan)
        self._rescanner.clock = self.reactor
        self._rescanner.start(RESCAN_INTERVAL, now=False)

    def spawn(self, index: int) -> _WorkerProcess:
        """Start worker C{index} (from 1)."""
        self._restarts.pop(index, None)
        childFDs: Dict[int, Any] = {0: "w", LOG_FD: "r", STDERR_FD: "r", QUEUED_FD: "r"}
        listeners: List[Tuple[str, str, int]] = []
        fd = FIRST_LISTENER_FD
        for role, services in self.mail.listeners.items():
            for listener in services:
                if listener.port is None:
                    continue
                childFDs[fd] = listener.port.fileno()
                listeners.append((role, listener.description, fd))
                fd += 1
        loadFD = None
        if self.table is not None:
            # The worker sets its slot once it serves.
            self.table.set(index, None)
            childFDs[fd] = self.table.fileno()
            loadFD = fd
        inherited = Inherited(index, self.count, tuple(listeners), loadFD=loadFD)
        boot = pickle.dumps({"config": self.mail.config, "inherited": inherited})
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([here] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        worker = _WorkerProcess(self, index)
        self.processes[index] = worker
        transport = self.reactor.spawnProcess(
            worker, self.executable, [self.executable, "-m", "mailnet.workers"], env=env, childFDs=childFDs
        )
        transport.writeToChild(0, boot)
        transport.closeChildFD(0)
        log.info("worker {index} started (pid {pid})", index=index, pid=transport.pid)
        return worker

    def queued(self, entryId: str) -> None:
        """A worker queued C{entryId}: the relay service takes it on."""
        queue = self.mail.queue
        if not entryId or getattr(queue, "listener", None) is None:
            return
        d = queue.readEntry(entryId)

        def found(entry: Any) -> None:
            listener = queue.listener
            if entry is not None and listener is not None:
                listener(entry)

        d.addCallbacks(found, lambda f: log.failure("could not read queue entry {id}", f, id=entryId))

    def rescan(self) -> Deferred:
        """Take on whatever a worker queued without telling (it died)."""
        queue = self.mail.queue
        d = queue.readEntries()

        def found(entries: Sequence[Any]) -> None:
            listener = queue.listener
            if listener is None:
                return
            for entry in entries:
                listener(entry)

        return d.addCallbacks(found, lambda f: log.failure("could not rescan the relay queue", f))

    def ended(self, worker: _WorkerProcess, reason: Any) -> None:
        index = worker.index
        if self.processes.get(index) is worker:
            del self.processes[index]
            if self.table is not None:
                # Not serving: the others stop leaving connections to it.
                self.table.set(index, None)
        value = reason.value
        how = (
            "exited with status %s" % (value.exitCode,)
            if value.signal is None
            else "was killed by signal %s" % (value.signal,)
        )
        if self._stopping:
            log.info("worker {index} stopped", index=index)
            return
        if self.reactor.seconds() - worker.started >= HEALTHY_AFTER:
            self._failures[index] = 0
        failures = self._failures.get(index, 0)
        delay = min(RESTART_MAX, RESTART_FIRST * 2**failures)
        self._failures[index] = failures + 1
        log.error("worker {index} {how}; starting it again in {delay:.0f} s", index=index, how=how, delay=delay)
        self._restarts[index] = self.reactor.callLater(delay, self.spawn, index)
        self.rescan()

    def signal(self, name: str) -> None:
        """Send signal C{name} (C{"HUP"}, C{"TERM"}) to every worker."""
        for worker in list(self.processes.values()):
            if worker.transport is None:
                continue
            try:
                worker.transport.signalProcess(name)
            except ierror.ProcessExitedAlready:
                pass

    def hangUp(self) -> None:
        """SIGHUP: the workers reload their certificate and logs too."""
        self.signal("HUP")

    def stopService(self) -> Deferred:
        service.Service.stopService(self)
        self._stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        if self._rescanner is not None and self._rescanner.running:
            self._rescanner.stop()
        waiting = [worker.ended for worker in self.processes.values()]
        self.signal("TERM")
        if not waiting:
            return succeed(None)
        kill = self.reactor.callLater(STOP_GRACE, self.signal, "KILL")
        d = DeferredList(waiting)

        def done(result: Any) -> None:
            if kill.active():
                kill.cancel()

        return d.addCallback(done)


# --- a worker -----------------------------------------------------------------


@implementer(ILogObserver)
class WorkerLogObserver:
    """
    A worker's log: each event formatted here, sent to the parent as one
    JSON line C{[time, level, namespace, text]} (cheap to write and to read,
    unlike a whole event as JSON).
    """

    def __init__(self, out: Any) -> None:
        self.out = out

    def __call__(self, event: Dict[str, Any]) -> None:
        text = logtext.formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            try:
                text += "\n" + failure.getTraceback()
            except Exception:
                text += "\n(unformattable traceback)"
        level = event.get("log_level") or LogLevel.info
        line = json.dumps([event.get("log_time", time.time()), level.name, event.get("log_namespace", "?"), text.rstrip("\n")])
        try:
            self.out.write(line + "\n")
        except (OSError, ValueError):
            pass  # the parent is gone: nothing to tell


def _readBoot(fd: int = 0) -> Dict[str, Any]:
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    # From our own parent, through a pipe only it holds.
    return pickle.loads(b"".join(chunks))


def main(reactor: Any = None) -> None:
    """The worker process: C{python -m mailnet.workers}, run by L{WorkerPool}."""
    boot = _readBoot()
    from twisted.logger import globalLogBeginner

    out = os.fdopen(LOG_FD, "w", encoding="utf-8", buffering=1)
    globalLogBeginner.beginLoggingTo([WorkerLogObserver(out)], redirectStandardIO=False)
    if reactor is None:
        from twisted.internet import reactor
    from mailnet.service import MailService

    inherited: Inherited = boot["inherited"]
    mail = MailService(boot["config"], reactor, inherited=inherited)
    parent = os.getppid()

    def orphaned() -> None:
        if os.getppid() != parent:
            log.warn("the parent process is gone: stopping")
            reactor.stop()

    def start() -> None:
        try:
            mail.privilegedStartService()
            mail.startService()
        except SystemExit:
            reactor.stop()
            return
        reactor.addSystemEventTrigger("before", "shutdown", mail.stopService)
        if inherited.loadFD is not None:
            try:
                table = LoadTable(inherited.loadFD, inherited.processes)
            except (OSError, ValueError) as e:
                log.warn("cannot share connection counts with the parent ({error}): not balancing", error=e)
            else:
                balance(mail, table, inherited.index, reactor)
            finally:
                os.close(inherited.loadFD)  # the mapping stays
        watch = LoopingCall(orphaned)
        watch.clock = reactor
        watch.start(PARENT_CHECK, now=False)

    reactor.callWhenRunning(start)
    reactor.run()


if __name__ == "__main__":
    main()
