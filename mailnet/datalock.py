# -*- test-case-name: tests.test_datalock -*-
"""
One daemon per data dir.

Two servers on one data dir would both run the relay queue and both
deliver (or bounce) the same message.  So while it runs, the daemon holds
an exclusive lock on C{DATA_DIR/mailnet.lock}, a file that also holds its
process id for the error message of a second one.

The lock is the operating system's (C{flock} on POSIX, C{msvcrt.locking}
on Windows), not the existence of the file: it goes away with the process
however it ends, so a crash leaves nothing stale to clean up.
C{mailnet-admin} takes no lock; it works beside a running daemon.

L{exclusively} is the same kind of lock, waited for and held around one
short read-modify-write of a shared file (C{quotas.json}).
"""

import contextlib
import os
import time
from typing import Iterator, Optional

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

from mailnet.errors import ConfigError

LOCK_NAME = "mailnet.lock"


def _tryLock(fd: int) -> bool:
    """@return: whether we got the lock (without waiting)."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # pragma: no cover (Windows)
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _lock(fd: int) -> None:
    """Take the lock, waiting for it as long as it takes."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    os.lseek(fd, 0, os.SEEK_SET)  # pragma: no cover (Windows)
    while True:  # pragma: no cover (Windows)
        try:
            # LK_LOCK itself tries once a second, ten times, then raises.
            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
            return
        except OSError:
            time.sleep(0.05)


@contextlib.contextmanager
def exclusively(path: str) -> Iterator[None]:
    """
    Hold an exclusive lock on the file at C{path} (created if need be)
    for the duration of the C{with} block, waiting for it if another
    process (or thread, with its own open) holds it.  A read-modify-write
    of a shared file done inside is not lost to a concurrent one.  The
    lock file is left in place: removing it would let a waiter lock a
    file that is no longer the one others open.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _lock(fd)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class DataDirLock:
    """
    The lock on one data dir.

    @ivar path: the lock file.
    """

    def __init__(self, dataDir: str) -> None:
        self.dataDir = dataDir
        self.path = os.path.join(dataDir, LOCK_NAME)
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        """
        Take the lock, and write our process id into the file.

        @raise ConfigError: another process holds it (naming its pid).
        @raise OSError: the file cannot be created (the caller says what
            to do about EACCES, ENOSPC ...).
        """
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if not _tryLock(fd):
            try:
                holder = os.read(fd, 32).decode("ascii", "replace").strip()
            except OSError:
                holder = ""
            os.close(fd)
            raise ConfigError(
                where="data_dir %s" % (self.dataDir,),
                problem="another mailnet%s is already running on it; stop it first, or give this one its own --data-dir"
                % (" (pid %s)" % (holder,) if holder.isdigit() else "",),
            )
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"%d\n" % (os.getpid(),))
        self._fd = fd

    def release(self) -> None:
        """Let go (closing the file releases the lock)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None
