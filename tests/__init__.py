# Journal files of a few KiB in tests: the daemon's 32 MiB, written at
# every service start, would slow the suite down.
from mailnet.store import journal as _journal

_journal.DEFAULT_SIZE = 64 * 1024
