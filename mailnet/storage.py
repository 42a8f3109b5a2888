# -*- test-case-name: tests.test_storage -*-
"""
Whether there is room for new mail, asked by the SMTP server at C{MAIL}
and C{RCPT}, before any data is taken: free space on the data dir's file
system (L{mailnet.diskspace.DiskSpace}), and, when quotas are kept, the
recipient's mailbox.

A refusal is temporary (C{452}): the client keeps the message and tries
again, and the relay queue keeps what it holds, so nothing acknowledged is
lost and nothing is half-stored.
"""

from typing import Any, Optional

from twisted.logger import Logger

from mailnet import metrics
from mailnet.diskspace import DiskSpace
from mailnet.smtp import codes

log = Logger()


class StorageGuard:
    """
    @ivar disk: the data dir's L{DiskSpace}.
    @ivar quotas: an object with C{check(address, size)} raising
        L{mailnet.errors.SMTPReply} for a full mailbox, or L{None}.
    """

    def __init__(self, disk: DiskSpace, quotas: Any = None) -> None:
        self.disk = disk
        self.quotas = quotas
        self._warned = False

    def _checkDisk(self) -> None:
        if not self.disk.low():
            if self._warned:
                log.info("free space in the data dir is back above min_free_space: taking mail again")
                self._warned = False
            return
        if not self._warned:
            free, total = self.disk.usage()
            log.warn(
                "free space in the data dir is {free} octets, below min_free_space ({floor}): "
                "refusing new mail with 452 4.3.1 until there is room",
                free=free,
                floor=self.disk.threshold(total),
            )
            self._warned = True
        metrics.storageRefused("disk")
        # RFC 5321 §4.5.3.1.10 / RFC 3463 §3.4: a temporary condition.
        raise codes.reply(codes.INSUFFICIENT_STORAGE, codes.T_SYSTEM_STORAGE, "Insufficient system storage")

    def checkMail(self, size: Optional[int]) -> None:
        """
        At C{MAIL FROM}.

        @raise SMTPReply: 452 4.3.1 when the disk is below its floor.
        """
        self._checkDisk()

    def checkRecipient(self, address: str, size: Optional[int]) -> Any:
        """
        At C{RCPT TO}, for a normalized address (local or not).

        @param size: MAIL's C{SIZE}, if given.
        @return: L{None}, or a L{Deferred} when the quota check must count
            a Maildir first (see L{mailnet.quota.Quotas.check}).
        @raise SMTPReply: 452 4.3.1 (disk), 452 4.2.2 or 552 5.2.2 (quota).
        """
        self._checkDisk()
        if self.quotas is not None:
            return self.quotas.check(address, size)
        return None
