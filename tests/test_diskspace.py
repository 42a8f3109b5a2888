# -*- test-case-name: tests.test_diskspace -*-
"""
min_free_space: the floor, its cache, and a full disk as SMTP clients see
it (a fault-injected C{disk_usage}).
"""

import smtplib

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailnet import metrics
from mailnet.diskspace import DEFAULT_FREE_SPACE, GiB, DiskSpace, FreeSpace, parseFreeSpace
from mailnet.errors import SMTPReply
from mailnet.storage import StorageGuard
from tests.support import startServer

MiB = 1024**2


class FakeDisk:
    """A C{shutil.disk_usage} whose figures tests set."""

    def __init__(self, total: int, free: int) -> None:
        self.total, self.free, self.calls = total, free, 0

    def __call__(self, path: str):
        self.calls += 1
        return (self.total, self.total - self.free, self.free)


class FreeSpaceTests(SynchronousTestCase):
    def test_parse(self) -> None:
        self.assertEqual(parseFreeSpace("1G, 5%"), DEFAULT_FREE_SPACE)
        self.assertEqual(parseFreeSpace("200M"), FreeSpace(200 * MiB, None))
        self.assertEqual(parseFreeSpace("2.5%"), FreeSpace(None, 2.5))
        self.assertEqual(parseFreeSpace("0"), FreeSpace(None, None))
        for bad in ("", "5%, 6%", "1G, 2G", "lots", "100%", "-1G"):
            self.assertRaises(ValueError, parseFreeSpace, bad)

    def test_smallerApplies(self) -> None:
        """1G or 5 %: a 20 MiB tmpfs keeps 1 MiB, a 1 TiB disk 1 GiB."""
        self.assertEqual(DEFAULT_FREE_SPACE.threshold(20 * MiB), MiB)
        self.assertEqual(DEFAULT_FREE_SPACE.threshold(1024 * GiB), GiB)
        self.assertEqual(FreeSpace().threshold(100), 0)
        self.assertEqual(str(DEFAULT_FREE_SPACE), "1G, 5%")


class DiskSpaceTests(SynchronousTestCase):
    def test_lowAndCached(self) -> None:
        """The figure is read at most once per second of the clock."""
        now = [100.0]
        disk = FakeDisk(20 * MiB, 10 * MiB)
        space = DiskSpace("/x", clock=lambda: now[0], diskUsage=disk)
        self.assertFalse(space.low())
        disk.free = MiB // 2
        self.assertFalse(space.low())
        self.assertEqual(disk.calls, 1)
        now[0] += 1.0
        self.assertTrue(space.low())
        self.assertEqual(disk.calls, 2)

    def test_unreadable(self) -> None:
        """A file system that cannot be read is not called full."""

        def broken(path):
            raise OSError("gone")

        self.assertFalse(DiskSpace("/x", diskUsage=broken).low())


class StorageGuardTests(SynchronousTestCase):
    def test_refusedWhenLow(self) -> None:
        disk = FakeDisk(20 * MiB, MiB // 2)
        guard = StorageGuard(DiskSpace("/x", diskUsage=disk, cacheFor=0))
        before = metrics.REGISTRY.get_sample_value("mailnet_storage_refusals_total", {"reason": "disk"}) or 0
        for check in (lambda: guard.checkMail(None), lambda: guard.checkRecipient("a@b.test", 10)):
            error = self.assertRaises(SMTPReply, check)
            self.assertEqual((error.code, error.text), (452, "4.3.1 Insufficient system storage"))
        self.assertEqual(metrics.REGISTRY.get_sample_value("mailnet_storage_refusals_total", {"reason": "disk"}), before + 2)
        disk.free = 10 * MiB
        guard.checkMail(None)
        guard.checkRecipient("a@b.test", None)


class FullDiskTests(TestCase):
    """
    A server whose data dir's file system is below min_free_space refuses
    new mail before it is sent, and takes it again by itself when space
    returns.
    """

    @inlineCallbacks
    def test_refusedThenResumed(self):
        server = yield startServer(self)
        disk = FakeDisk(20 * MiB, MiB // 2)
        server.service.diskSpace.diskUsage = disk
        server.service.diskSpace.cacheFor = 0
        message = b"Subject: hi\r\n\r\nhello\r\n"

        def attempt():
            client = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10)
            try:
                client.ehlo("client.remote.test")
                return client.mail("bob@remote.test")
            finally:
                client.close()

        def send():
            client = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10)
            try:
                return client.sendmail("bob@remote.test", ["postmaster@example.test"], message)
            finally:
                client.close()

        self.assertEqual((yield deferToThread(attempt)), (452, b"4.3.1 Insufficient system storage"))
        self.assertEqual(server.newFiles("postmaster@example.test"), [])
        disk.free = 10 * MiB
        yield deferToThread(send)
        self.assertEqual(len(server.newFiles("postmaster@example.test")), 1)
