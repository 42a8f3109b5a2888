# -*- test-case-name: tests.test_benchmarks -*-
"""
Resource accounting of another process from C{/proc} (Linux), without
psutil: CPU seconds, resident set size and its peak.
"""

import os
import resource
from typing import Dict, Optional

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpuSeconds(pid: int) -> float:
    """
    User plus system CPU time of every thread of C{pid}, in seconds.

    proc(5): fields 14 and 15 of C{/proc/PID/stat}, counted after the
    parenthesised command name (which may itself hold spaces).
    """
    with open("/proc/%d/stat" % (pid,), "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def memory(pid: int) -> Dict[str, int]:
    """
    C{VmRSS} (resident now) and C{VmHWM} (peak resident) of C{pid}, in
    octets.
    """
    found = {}
    with open("/proc/%d/status" % (pid,), "rb") as f:
        for line in f:
            key, _, value = line.partition(b":")
            if key in (b"VmRSS", b"VmHWM"):
                found[key.decode("ascii")] = int(value.split()[0]) * 1024
    return found


def resetPeak(pid: int) -> bool:
    """
    Reset C{VmHWM} to the current RSS (proc(5): writing C{5} to
    C{clear_refs}, Linux 4.0 and later).

    @return: whether the kernel accepted it; if not, peaks can only be
        compared with the peak before.
    """
    try:
        with open("/proc/%d/clear_refs" % (pid,), "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def raiseFileLimit(wanted: Optional[int] = None) -> int:
    """
    Raise this process's C{RLIMIT_NOFILE} soft limit as far as the hard
    limit allows.

    @return: the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if wanted is None or hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target == resource.RLIM_INFINITY:
        target = 1 << 20
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _times(path: str) -> "tuple[float, float]":
    with open(path, "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def cpuBreakdown(pid: int) -> Dict[str, float]:
    """
    CPU seconds of C{pid} split three ways: C{user} and C{system} for the
    whole process, and C{reactor} for its main thread alone (whose thread
    id is the process id), where the reactor runs; the rest is the thread
    pool (fsync, Argon2).
    """
    user, system = _times("/proc/%d/stat" % (pid,))
    mainUser, mainSystem = _times("/proc/%d/task/%d/stat" % (pid, pid))
    return {"user": user, "system": system, "reactor": mainUser + mainSystem}
