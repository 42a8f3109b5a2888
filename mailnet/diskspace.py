# -*- test-case-name: tests.test_diskspace -*-
"""
Free space on the data dir's file system, and the floor below which new
mail is refused (C{[limits] min_free_space}).

Mail is refused before any of it is taken (C{452 4.3.1} at MAIL and RCPT)
rather than half-stored on a full disk; the relay queue keeps what it has.
The figure is read with C{shutil.disk_usage} (portable, Windows too) at
most once a second: one C{statvfs} costs about a microsecond, so it is
read on the reactor.
"""

import re
import shutil
import time
from typing import Callable, NamedTuple, Optional, Tuple

import attr

GiB = 1024**3


@attr.s(frozen=True, auto_attribs=True)
class FreeSpace:
    """
    A floor of free space: octets, a percentage of the file system, or
    both (then the smaller applies, so a small file system is not refused
    everything by a floor meant for a large one).  Neither: no floor.
    """

    octets: Optional[int] = None
    percent: Optional[float] = None

    def threshold(self, total: int) -> int:
        """@return: the floor in octets on a file system of C{total} octets."""
        floors = []
        if self.octets is not None:
            floors.append(self.octets)
        if self.percent is not None:
            floors.append(int(total * self.percent / 100))
        return min(floors) if floors else 0

    def __str__(self) -> str:
        parts = []
        if self.octets is not None:
            parts.append(_formatSize(self.octets))
        if self.percent is not None:
            parts.append("%g%%" % (self.percent,))
        return ", ".join(parts) or "0"


#: The default floor: 1 GiB, or 5 % of a smaller file system.
DEFAULT_FREE_SPACE = FreeSpace(GiB, 5.0)


def _formatSize(octets: int) -> str:
    for unit, size in (("G", GiB), ("M", 1024**2), ("K", 1024)):
        if octets and octets % size == 0:
            return "%d%s" % (octets // size, unit)
    return str(octets)


def parseFreeSpace(text: str) -> FreeSpace:
    """
    Parse C{min_free_space}: C{2G}, C{10%}, C{1G, 5%} (the smaller of
    the two), or C{0} (no floor).

    @raise ValueError: anything else.
    """
    octets: Optional[int] = None
    percent: Optional[float] = None
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", part)
        if match:
            value = float(match.group(1))
            if not 0 <= value < 100 or percent is not None:
                raise ValueError("expected one percentage below 100")
            percent = value
            continue
        match = re.fullmatch(r"(\d+)\s*([kKmMgGtT]?)[bB]?", part)
        if not match or octets is not None:
            raise ValueError("expected a size such as 1G, a percentage such as 5%, or both")
        octets = int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": GiB, "t": 1024 * GiB}[match.group(2).lower()]
    if octets == 0 and percent is None:
        octets = None
    return FreeSpace(octets, percent)


class Usage(NamedTuple):
    free: int
    total: int


class DiskSpace:
    """
    The data dir's free space, cached for C{cacheFor} seconds.

    @ivar path: a directory on the file system watched.
    @ivar floor: the L{FreeSpace} below which L{low} is true.
    """

    def __init__(
        self,
        path: str,
        floor: FreeSpace = DEFAULT_FREE_SPACE,
        clock: Callable[[], float] = time.monotonic,
        diskUsage: Callable[[str], Tuple[int, int, int]] = shutil.disk_usage,
        cacheFor: float = 1.0,
    ) -> None:
        self.path = path
        self.floor = floor
        self.clock = clock
        self.diskUsage = diskUsage
        self.cacheFor = cacheFor
        self._cached: Optional[Usage] = None
        self._readAt = 0.0

    def usage(self) -> Usage:
        """
        @return: free octets (for an unprivileged user) and the file
            system's size; (0, 0) if it cannot be read.
        """
        now = self.clock()
        if self._cached is None or now - self._readAt >= self.cacheFor or now < self._readAt:
            try:
                total, _, free = self.diskUsage(self.path)
            except OSError:
                total = free = 0
            self._cached, self._readAt = Usage(free, total), now
        return self._cached

    def threshold(self, total: Optional[int] = None) -> int:
        return self.floor.threshold(self.usage().total if total is None else total)

    def low(self) -> bool:
        """@return: whether free space is below the floor (new mail is refused)."""
        free, total = self.usage()
        if total == 0:
            # Unreadable: let the store's own errors speak.
            return False
        return free < self.floor.threshold(total)
