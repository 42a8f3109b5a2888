# -*- test-case-name: tests.test_benchmarks -*-
"""
Starting and stopping the server under test (L{mailnetbench.serve}) as a
child process, and reading its ports from the line it prints.
"""

import json
import os
import sys
from typing import Any, Dict, Optional

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

SERVE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.py")


class ServerProcess(ProcessProtocol):
    """Collects the start-up line and the tail of stderr."""

    def __init__(self) -> None:
        self.started: Optional[Deferred] = Deferred()
        self.ended: Deferred = Deferred()
        self.exited = False
        self._out = b""
        self.stderr = b""

    def outReceived(self, data: bytes) -> None:
        self._out += data
        if self.started is not None and b"\n" in self._out:
            line, self._out = self._out.split(b"\n", 1)
            started, self.started = self.started, None
            started.callback(json.loads(line))

    def errReceived(self, data: bytes) -> None:
        self.stderr = (self.stderr + data)[-20000:]

    def processEnded(self, reason) -> None:
        self.exited = True
        if self.started is not None:
            started, self.started = self.started, None
            started.errback(RuntimeError("the server exited at start-up:\n" + self.stderr.decode("utf-8", "replace")))
        self.ended.callback(None)


class Server:
    """A running server: C{pid}, C{ports}, C{maildirs}, C{info}."""

    def __init__(self, reactor, process: ServerProcess, info: Dict[str, Any], spec: Dict[str, Any]) -> None:
        self._reactor = reactor
        self.process = process
        self.info = info
        self.spec = spec
        self.pid: int = info["pid"]
        self.ports: Dict[str, int] = info["ports"]
        self.maildirs: Dict[str, str] = info["maildirs"]

    async def stop(self, timeout: float = 30) -> None:
        """Close its stdin (it stops itself), and kill it if it lingers."""
        if self.process.exited:
            return
        self.process.transport.closeStdin()
        ended = self.process.ended
        timer = self._reactor.callLater(timeout, self._kill)
        await ended
        if timer.active():
            timer.cancel()

    def _kill(self) -> None:
        if not self.process.exited:
            self.process.transport.signalProcess("KILL")


async def startServer(reactor, spec: Dict[str, Any], timeout: float = 120, serve: str = SERVE) -> Server:
    """
    Start L{mailnetbench.serve} with C{spec}.

    @param serve: the C{serve.py} to run: another checkout's runs that
        checkout's mailnet (a before-and-after figure).

    @raise RuntimeError: it exited, or did not report its ports in time.
    """
    process = ServerProcess()
    started = process.started
    assert started is not None
    reactor.spawnProcess(process, sys.executable, [sys.executable, serve, json.dumps(spec)], env=dict(os.environ))
    started.addTimeout(timeout, reactor)
    try:
        info = await started
    except Exception:
        if not process.exited:
            process.transport.signalProcess("KILL")
        raise
    return Server(reactor, process, info, spec)
