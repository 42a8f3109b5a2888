# -*- test-case-name: tests.test_benchmarks -*-
"""
The baseline: Twisted's stock ESMTP classes (L{twisted.mail.smtp.ESMTP})
with the same durable Maildir delivery as mailnet (write into C{tmp/},
fsync, link into C{new/}, fsync C{new/}, in a thread pool, before 250).

The issue's figures for "Twisted's stock classes" were measured with such
a server on another machine; running it here, in the same run, gives the
comparison on this machine too.
"""

import os
from typing import Callable, IO, Optional

from twisted.internet.defer import Deferred
from twisted.mail import smtp
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mailnet.store.maildir import ThreadRunner, ensureMaildir, fsyncDirectory, uniqueName


@implementer(smtp.IMessage)
class StockMessage:
    """One message for one mailbox, written to C{tmp/} as lines arrive."""

    def __init__(self, maildir: str, run: Callable[..., Deferred], hostname: str) -> None:
        self._maildir = maildir
        self._run = run
        self._name = uniqueName(hostname)
        self._tmp = os.path.join(maildir, "tmp", self._name)
        self._file: Optional[IO[bytes]] = open(self._tmp, "xb")
        self._size = 0

    def lineReceived(self, line: bytes) -> None:
        assert self._file is not None
        # The stock server hands over lines without their CRLF.
        self._file.write(line + b"\r\n")
        self._size += len(line) + 2

    def eomReceived(self) -> Deferred:
        f, self._file = self._file, None
        assert f is not None

        def publish() -> str:
            try:
                f.flush()
                os.fsync(f.fileno())
            finally:
                f.close()
            final = os.path.join(self._maildir, "new", "%s,S=%d" % (self._name, self._size))
            os.link(self._tmp, final)
            os.unlink(self._tmp)
            fsyncDirectory(os.path.join(self._maildir, "new"))
            return self._name

        return self._run(publish)

    def connectionLost(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            f.close()
            os.unlink(self._tmp)


@implementer(smtp.IMessageDelivery)
class StockDelivery:
    """Accepts mail for C{domain}'s known users into C{root/domain/local}."""

    def __init__(self, root: str, domain: str, users, run: Callable[..., Deferred], hostname: str) -> None:
        self._root = root
        self._domain = domain
        self._users = set(u.lower() for u in users)
        self._run = run
        self._hostname = hostname

    def receivedHeader(self, helo, origin, recipients) -> bytes:
        return b"Received: from " + (helo[0] or b"unknown") + b" by " + self._hostname.encode("ascii")

    def validateFrom(self, helo, origin):
        return origin

    def validateTo(self, user):
        address = ("%s@%s" % (user.dest.local.decode("ascii"), user.dest.domain.decode("ascii"))).lower()
        if address not in self._users:
            raise smtp.SMTPBadRcpt(user)
        maildir = os.path.join(self._root, self._domain, address.split("@", 1)[0])
        ensureMaildir(maildir)
        return lambda: StockMessage(maildir, self._run, self._hostname)


class StockFactory(smtp.SMTPFactory):
    protocol = smtp.ESMTP

    def __init__(self, delivery: StockDelivery, hostname: str) -> None:
        smtp.SMTPFactory.__init__(self)
        self.delivery = delivery
        self.domain = hostname.encode("ascii")

    def buildProtocol(self, addr):
        p = smtp.SMTPFactory.buildProtocol(self, addr)
        p.delivery = self.delivery
        return p


def makeStockFactory(reactor, root: str, domain: str, users, hostname: str) -> "tuple[StockFactory, ThreadPool]":
    """
    @return: the factory, and the thread pool (16 threads at most, as
        mailnet's) that the caller starts and stops.
    """
    pool = ThreadPool(minthreads=1, maxthreads=16, name="stock-io")
    delivery = StockDelivery(root, domain, users, ThreadRunner(reactor, pool), hostname)
    return StockFactory(delivery, hostname), pool
