# -*- test-case-name: tests.test_benchmarks -*-
"""
The machine's own ceilings, measured in the same run as the server so that
figures can be read as ratios: how many file+directory fsyncs per second
the disk allows, and how many loopback round trips per second.

Everything here blocks; the driver runs it in a thread.
"""

import os
import platform
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, List

# A blocking echo server for the round-trip ceiling: one connection, echo
# until EOF.  It runs in its own process so that client and server do not
# share an interpreter lock, as with mailnet.
_ECHO = r"""
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    d = c.recv(64)
    if not d:
        break
    c.sendall(d)
"""


def describe() -> Dict[str, object]:
    """nproc, CPU model, kernel, Python: what the figures were measured on."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        # Anything else running makes every figure worse: say so.
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": _twistedVersion(),
        "implementation": platform.python_implementation(),
    }


def _twistedVersion() -> str:
    import twisted

    return twisted.__version__


def _fsyncLoop(directory: str, deadline: float, limit: int, counts: List[int], index: int) -> None:
    """
    What a Maildir delivery does for each message: write a file in C{tmp/},
    fsync it, link it into C{new/}, fsync C{new/}.
    """
    tmp = os.path.join(directory, "tmp")
    new = os.path.join(directory, "new")
    os.makedirs(tmp, exist_ok=True)
    os.makedirs(new, exist_ok=True)
    payload = b"x" * 2048
    done = 0
    while done < limit and time.perf_counter() < deadline:
        name = "%d.%d" % (index, done)
        path = os.path.join(tmp, name)
        with open(path, "xb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.link(path, os.path.join(new, name))
        os.unlink(path)
        fd = os.open(new, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        done += 1
    counts[index] = done


def fsyncRate(root: str, threads: int, seconds: float, limit: int) -> Dict[str, float]:
    """
    File+directory fsyncs per second from C{threads} threads, each in its
    own directory under C{root} (as deliveries to different users are).

    @param limit: the most fsync pairs per thread (a bound on the run).
    """
    counts = [0] * threads
    cpu = os.times()
    start = time.perf_counter()
    deadline = start + seconds
    workers = [
        threading.Thread(target=_fsyncLoop, args=(os.path.join(root, "t%d" % (i,)), deadline, limit, counts, i))
        for i in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    cpuAfter = os.times()
    # CPU the kernel and Python spent per file+dir fsync pair: part of any
    # durable server's CPU per message on this machine.
    used = (cpuAfter.user - cpu.user) + (cpuAfter.system - cpu.system)
    total = sum(counts)
    return {
        "threads": threads,
        "count": total,
        "seconds": elapsed,
        "per_second": total / elapsed if elapsed else 0.0,
        "cpu_ms_per_op": used * 1000 / total if total else None,
    }


def createRate(root: str, seconds: float, limit: int) -> Dict[str, float]:
    """
    Files created (C{O_EXCL}), written with 2 KB and closed per second from
    one thread, without fsync, and the CPU each costs: the step of a
    Maildir delivery that happens before any fsync.
    """
    os.makedirs(root, exist_ok=True)
    payload = b"x" * 2048
    done = 0
    cpu = time.thread_time()
    start = time.perf_counter()
    deadline = start + seconds
    while done < limit and time.perf_counter() < deadline:
        with open(os.path.join(root, "c%d" % (done,)), "xb") as f:
            f.write(payload)
        done += 1
    elapsed = time.perf_counter() - start
    used = time.thread_time() - cpu
    return {
        "count": done,
        "seconds": elapsed,
        "per_second": done / elapsed if elapsed else 0.0,
        "cpu_ms_per_op": used * 1000 / done if done else None,
    }


def loopbackRoundTrips(seconds: float, limit: int) -> Dict[str, float]:
    """
    One-byte round trips per second over TCP on 127.0.0.1 between two
    processes with blocking sockets: the best any request/response
    protocol can do on this machine, one connection at a time.
    """
    echo = subprocess.Popen([sys.executable, "-c", _ECHO], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert echo.stdout is not None
        port = int(echo.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            done = 0
            start = time.perf_counter()
            deadline = start + seconds
            while done < limit and time.perf_counter() < deadline:
                s.sendall(b"x")
                if not s.recv(64):
                    raise ConnectionError("echo server went away")
                done += 1
            elapsed = time.perf_counter() - start
    finally:
        echo.wait(timeout=10)
    return {"count": done, "seconds": elapsed, "per_second": done / elapsed if elapsed else 0.0}
