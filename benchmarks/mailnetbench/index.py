# -*- test-case-name: tests.test_index -*-
"""
The IMAP folder store on its own (no protocol): how long opening and
syncing an inbox of N messages takes with a cold index (first use: every
file listed, stat'ed and indexed), after a restart (the index on disk, the
process new), and warm (the folder open, nothing changed); and what a STORE
of every message and a STATUS cost.

Run from the top of a checkout::

    python benchmarks/mailnetbench/index.py                # 10,000 and 100,000 messages
    python benchmarks/mailnetbench/index.py --count 10000  # one size
    python benchmarks/mailnetbench/index.py --tmp /path/on/the/disk/to/measure

Messages are 2 KB, written straight into C{new/} as mailnet's delivery
names them (C{S=} and C{W=} sizes), with directory mtimes set into the
past as on a server that has been running a while.  The work runs
synchronously on this thread (the server runs the same calls in its
thread pool), so the figures are the store's own cost.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from mailnet.store.folders import AccountRegistry  # noqa: E402
from mailnet.store.maildir import MaildirStore, runSynchronously  # noqa: E402

ADDRESS = "bench@example.test"
BODY = (b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrstu\n" * 26)[:2000]


def populate(path: str, count: int) -> None:
    """C{count} messages of 2 KB in C{path/new}, named as mailnet names its deliveries."""
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    start = int(time.time()) - count
    for i in range(count):
        data = b"Subject: message %d\nFrom: a@example.test\n\n" % (i,) + BODY
        wire = len(data) + data.count(b"\n")
        name = "%d.M%dP1Q%d.bench,S=%d,W=%d" % (start + i, i % 1000000, i, len(data), wire)
        with open(os.path.join(path, "new", name), "wb") as f:
            f.write(data)
    old = time.time() - 60
    for sub in ("cur", "new"):
        os.utime(os.path.join(path, sub), (old, old))


def _result(d):
    results: List = []
    d.addBoth(results.append)
    value = results[0]
    if hasattr(value, "raiseException"):
        value.raiseException()
    return value


def _timed(figures: Dict[str, float], name: str, f) -> None:
    """Record the wall time of C{f()} as C{name}, and its CPU time (a busy machine inflates the wall time)."""
    start, startCPU = time.perf_counter(), time.process_time()
    f()
    figures[name] = time.perf_counter() - start
    figures[name + " (CPU)"] = time.process_time() - startCPU


def measure(root: str, count: int) -> Dict[str, float]:
    store = MaildirStore(root, runSynchronously, "bench.host")
    path = store.pathFor(ADDRESS)
    populate(path, count)
    figures: Dict[str, float] = {}

    registry = AccountRegistry(store, runSynchronously)
    account = registry.open(ADDRESS)
    folders = []
    _timed(figures, "open, cold index", lambda: folders.append(_result(account.openFolder("INBOX"))))
    folder = folders[0]
    state = _result(folder.sync())
    assert len(state.messages) == count, len(state.messages)
    _timed(figures, "sync, warm, nothing new", lambda: _result(folder.sync()))
    _timed(figures, "STATUS", lambda: _result(account.status("INBOX")))
    uids = [m.uid for m in state.messages]
    _timed(figures, "STORE +FLAGS (\\Seen) on all", lambda: _result(folder.setFlags(uids, {"\\Seen"}, "+")))
    _timed(figures, "STORE +FLAGS ($Label1) on all (index only)", lambda: _result(folder.setFlags(uids, {"$Label1"}, "+")))
    old = time.time() - 60
    for sub in ("cur", "new"):
        os.utime(os.path.join(path, sub), (old, old))
    # The sync a running server does now and then: it notes the directories' mtimes.
    _result(folder.sync())
    folder.close()
    registry.release(account)

    registry = AccountRegistry(store, runSynchronously)
    account = registry.open(ADDRESS)
    _timed(figures, "open after a restart (index on disk)", lambda: folders.append(_result(account.openFolder("INBOX"))))
    folder = folders[-1]
    state = _result(folder.sync())
    assert len(state.messages) == count and all("\\Seen" in m.flags for m in state.messages)
    folder.close()
    registry.release(account)

    # The same, but the directories changed while the server was down.
    os.utime(os.path.join(path, "cur"))
    registry = AccountRegistry(store, runSynchronously)
    account = registry.open(ADDRESS)
    _timed(figures, "open after a restart, directories changed", lambda: folders.append(_result(account.openFolder("INBOX"))))
    folder = folders[-1]
    # A new message: the directory is listed again, one file indexed.
    with open(os.path.join(path, "new", "%d.M1P2Q1.bench" % (time.time(),)), "wb") as f:
        f.write(b"Subject: new\n\nnew\n")
    _timed(figures, "sync, one new message", lambda: _result(folder.sync()))
    folder.close()
    registry.release(account)
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, action="append", help="messages in the inbox (repeatable; default 10000 and 100000)")
    parser.add_argument("--tmp", default=None, help="where to make the Maildirs")
    parser.add_argument("--json", default=None, help="also write the figures as JSON to this file")
    options = parser.parse_args(argv)
    results = {}
    for count in options.count or [10000, 100000]:
        root = tempfile.mkdtemp(prefix="mailnet-index-bench-", dir=options.tmp)
        try:
            print("%d messages ..." % (count,), file=sys.stderr)
            results[count] = measure(root, count)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    counts = sorted(results)
    print("%-50s" % ("seconds",) + "".join("%12s" % ("%d msgs" % c,) for c in counts))
    for name in results[counts[0]]:
        print("%-50s" % (name,) + "".join("%12.3f" % (results[c][name],) for c in counts))
    if options.json:
        with open(options.json, "w") as f:
            json.dump({str(c): figures for c, figures in results.items()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
