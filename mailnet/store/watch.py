# -*- test-case-name: tests.test_index -*-
"""
Noticing changes other processes make to a Maildir (an external MDA, a
second mailnet, Dovecot, mutt): IDLE sessions must hear of them within
2 s.  Linux has inotify (through L{twisted.internet.inotify}); elsewhere the
directories' mtimes are polled every second.

A watcher has one method, C{watch(paths, callback)}: call C{callback()}
on the reactor thread soon after anything in one of the directories
C{paths} changes; it returns a callable that stops the watch.  Bursts of
events (a sync renaming a thousand files) are coalesced into one call.
"""

import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

#: How long events are gathered before the callback is called.
COALESCE = 0.05
#: The polling period.
POLL_INTERVAL = 1.0


class _Coalescer:
    """Calls C{callback} once, C{delay} seconds after the first of a burst of triggers."""

    def __init__(self, clock, callback: Callable[[], None], delay: float) -> None:
        self._clock = clock
        self._callback = callback
        self._delay = delay
        self._pending = None

    def __call__(self, *ignored) -> None:
        if self._pending is None:
            self._pending = self._clock.callLater(self._delay, self._fire)

    def _fire(self) -> None:
        self._pending = None
        try:
            self._callback()
        except Exception:
            log.failure("A directory watcher's callback failed")

    def cancel(self) -> None:
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None


def _mtimes(paths: Sequence[str]) -> Tuple[Optional[int], ...]:
    result: List[Optional[int]] = []
    for path in paths:
        try:
            result.append(os.stat(path).st_mtime_ns)
        except OSError:
            result.append(None)
    return tuple(result)


class PollingWatcher:
    """
    Polls every watched directory's mtime each C{interval} seconds (the
    stat calls run through C{run}, off the reactor thread, when given).

    @param clock: an L{twisted.internet.interfaces.IReactorTime}.
    """

    def __init__(self, clock, run: Optional[Callable[..., Deferred]] = None, interval: float = POLL_INTERVAL) -> None:
        self._clock = clock
        self._run = run or maybeDeferred
        self._interval = interval
        self._watches: Dict[int, Tuple[Tuple[str, ...], Callable[[], None], List]] = {}
        self._ids = 0
        self._loop: Optional[LoopingCall] = None

    def watch(self, paths: Sequence[str], callback: Callable[[], None]) -> Callable[[], None]:
        self._ids += 1
        ident = self._ids
        paths = tuple(paths)
        self._watches[ident] = (paths, callback, [_mtimes(paths)])
        if self._loop is None:
            self._loop = LoopingCall(self._poll)
            self._loop.clock = self._clock
            self._loop.start(self._interval, now=False).addErrback(lambda f: log.failure("Polling stopped", f))

        def stop() -> None:
            self._watches.pop(ident, None)
            if not self._watches and self._loop is not None:
                loop, self._loop = self._loop, None
                if loop.running:
                    loop.stop()

        return stop

    def _poll(self) -> Deferred:
        watches = list(self._watches.items())

        def check(results) -> None:
            for (ident, (_, callback, last)), now in zip(watches, results):
                if ident not in self._watches or now == last[0]:
                    continue
                last[0] = now
                try:
                    callback()
                except Exception:
                    log.failure("A directory watcher's callback failed")

        def statAll():
            return [_mtimes(paths) for _, (paths, _, _) in watches]

        return self._run(statAll).addCallback(check).addErrback(lambda f: log.failure("Polling failed", f))


class InotifyWatcher:
    """
    Watches directories with inotify (Linux).

    @param reactor: the reactor (inotify is a reader on it).
    @raise Exception: inotify is not available here (see L{makeWatcher}).
    """

    def __init__(self, reactor, coalesce: float = COALESCE) -> None:
        from twisted.internet import inotify

        self._inotify = inotify
        self._reactor = reactor
        self._coalesce = coalesce
        self._notifier = _robustINotify(inotify)(reactor)
        self._notifier.startReading()
        self._listeners: Dict[str, List[_Coalescer]] = {}
        self._fallback: Optional[PollingWatcher] = None
        # Entries created, removed or renamed: a delivery, flag change or
        # expunge; IN_ATTRIB: the directory's own mtime set (a keyword-only
        # change by another mailnet).  (A removed directory also reports
        # IN_DELETE_SELF and IN_IGNORED, asked for or not.)
        self._mask = inotify.IN_CREATE | inotify.IN_DELETE | inotify.IN_MOVED_FROM | inotify.IN_MOVED_TO | inotify.IN_ATTRIB

    def watch(self, paths: Sequence[str], callback: Callable[[], None]) -> Callable[[], None]:
        coalescer = _Coalescer(self._reactor, callback, self._coalesce)
        watched: List[str] = []
        polling: List[Callable[[], None]] = []
        for path in paths:
            listeners = self._listeners.get(path)
            if listeners is None:
                try:
                    self._notifier.watch(self._filePath(path), mask=self._mask, callbacks=[self._dispatcher(path)])
                except Exception as e:
                    # Out of inotify watches (fs.inotify.max_user_watches),
                    # or a file system without inotify: poll this one.
                    log.info("Polling {path} for changes: {error}", path=path, error=e)
                    if self._fallback is None:
                        self._fallback = PollingWatcher(self._reactor)
                    polling.append(self._fallback.watch([path], coalescer))
                    continue
                listeners = self._listeners[path] = []
            listeners.append(coalescer)
            watched.append(path)

        def stop() -> None:
            coalescer.cancel()
            for stopPolling in polling:
                stopPolling()
            del polling[:]
            for path in watched:
                listeners = self._listeners.get(path, [])
                if coalescer in listeners:
                    listeners.remove(coalescer)
                if not listeners and self._listeners.pop(path, None) is not None:
                    try:
                        self._notifier.ignore(self._filePath(path))
                    except KeyError:
                        pass
            del watched[:]

        return stop

    def _filePath(self, path: str):
        from twisted.python.filepath import FilePath

        return FilePath(path.encode("utf-8"))

    def _dispatcher(self, path: str) -> Callable:
        def dispatch(watch, filePath, mask) -> None:
            for listener in list(self._listeners.get(path, ())):
                listener()
            if mask & self._inotify.IN_DELETE_SELF:
                # The directory is gone (its folder deleted): INotify drops
                # the watch itself; forget it too, so that a new directory
                # there is watched afresh.
                self._listeners.pop(path, None)
            elif mask & self._inotify.IN_IGNORED:
                # The watch ended otherwise (the file system went away).
                self._listeners.pop(path, None)
                try:
                    self._notifier.ignore(self._filePath(path))
                except KeyError:
                    pass

        return dispatch

    def close(self) -> None:
        self._notifier.close()


def _robustINotify(inotify):
    """
    L{twisted.internet.inotify.INotify}, except that the removal of one
    watched directory does not close it: Twisted 26.10 calls
    C{loseConnection} on any C{IN_DELETE_SELF}, which would end every other
    folder's watch in the process.
    """

    class RobustINotify(inotify.INotify):
        _closing = False

        def loseConnection(self) -> None:
            if self._closing:
                super().loseConnection()

        def close(self) -> None:
            self._closing = True
            super().loseConnection()

    return RobustINotify


def makeWatcher(reactor, run: Optional[Callable[..., Deferred]] = None):
    """
    inotify where the system has it, polling every second otherwise.
    """
    try:
        return InotifyWatcher(reactor)
    except Exception:
        log.info("No inotify here: polling Maildirs for changes every {interval}s", interval=POLL_INTERVAL)
        return PollingWatcher(reactor, run)
