# -*- test-case-name: tests.test_pop3_server -*-
"""
Putting stored messages on the POP3 wire: line-ending repair and
dot-stuffing done chunk by chunk, and a pull producer that streams a
message from disk without ever holding it whole.
"""

import re
from typing import IO, Callable, Iterator, Optional

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IConsumer, IPullProducer
from twisted.python.failure import Failure
from zope.interface import implementer

# A LF not preceded by CR inside one chunk; the chunk's first byte is
# handled separately, since its CR may have ended the previous chunk.
# Written LF first: the regular expression engine then looks for the LF in
# a tight loop and tries the look-behind only there, instead of at every
# octet.
_BARE_LF = re.compile(rb"\n(?<!\r\n)")

# A bare LF or a line that begins with a dot: what a message stored with
# CRLF may need changed.  One search for both costs little more than one.
_TO_CHANGE = re.compile(rb"\n(?:(?<!\r\n)|\.)")


def _withCRLF(data: bytes) -> bytes:
    """C{data} with every bare LF made a CRLF."""
    if b"\r" not in data:
        # Files written by mailnet (LF only): one pass at C speed.
        return data.replace(b"\n", b"\r\n")
    if _BARE_LF.search(data) is None:
        # CRLF throughout (files written by others, the benchmark's).
        return data
    # Rare: a foreign file mixing CRLF and bare LF.
    return _BARE_LF.sub(b"\r\n", data)


def _hasDotLine(data: bytes) -> bool:
    """Whether a line after the first begins with a dot."""
    # rfind, not "in": its search skips ahead twice as fast over text
    # (measured on CPython 3.11 with CRLF mail and prose).
    return data.rfind(b"\n.") >= 0


def stuffed(data: bytes) -> bytes:
    """
    @return: the body of a multi-line response that carries the whole
        message C{data}, its end included: what a new L{DotStuffer} makes
        of C{data} with L{DotStuffer.feed} then L{DotStuffer.end}, without
        the object.
    """
    if b"\r" in data and _TO_CHANGE.search(data) is None:
        # CRLF throughout and no dotted line: one search, sent as it is.
        out = data
    else:
        out = _withCRLF(data)
        if _hasDotLine(out):
            out = out.replace(b"\n.", b"\n..")
    if out[:1] == b".":
        out = b"." + out
    if not out or out.endswith(b"\n"):
        return out + b".\r\n"
    if out.endswith(b"\r"):
        return out + b"\n.\r\n"
    return out + b"\r\n.\r\n"


class DotStuffer:
    """
    Turns message bytes into the body of a POP3 multi-line response.

    RFC 1939 §3: lines are terminated by CRLF, and a line that begins with
    "." gets another "." in front of it; the response ends with C{.CRLF}.
    Stored files written by mailnet are CRLF already, so the octets sent
    (before stuffing) equal the file size; a bare LF written by another MDA
    is sent as CRLF.  State is carried from one chunk to the next so that a
    line boundary (or a CR LF pair) split across chunks is handled exactly
    as if the message were one piece.
    """

    def __init__(self) -> None:
        self._atLineStart = True
        self._afterCR = False

    def feed(self, data: bytes) -> bytes:
        """
        @return: the wire form of the next piece of the message.
        """
        if not data:
            return b""
        # The CR that ended the previous chunk and an LF starting this one
        # are one CRLF: the search for bare LFs starts after that LF.
        start = 1 if self._afterCR and data[:1] == b"\n" else 0
        out = data[:start] + _withCRLF(data[start:]) if start else _withCRLF(data)
        if _hasDotLine(out):
            out = out.replace(b"\n.", b"\n..")
        if self._atLineStart and out[:1] == b".":
            out = b"." + out
        self._afterCR = data.endswith(b"\r")
        self._atLineStart = data.endswith(b"\n")
        return out

    def end(self) -> bytes:
        """
        @return: what ends the response: a CRLF if the message did not end
            with one, then the terminating C{.CRLF}.
        """
        if self._atLineStart:
            return b".\r\n"
        if self._afterCR:
            return b"\n.\r\n"
        return b"\r\n.\r\n"


def wholeMessage(f: IO[bytes], chunkSize: int) -> Iterator[bytes]:
    """
    The message, C{chunkSize} octets at a time (RETR).
    """
    while True:
        chunk = f.read(chunkSize)
        if not chunk:
            return
        yield chunk


def headersAndLines(f: IO[bytes], bodyLines: int, chunkSize: int) -> Iterator[bytes]:
    """
    The header section, the blank line after it, and at most C{bodyLines}
    lines of the body (RFC 1939 §7, TOP).  Lines are read at most
    C{chunkSize} octets at a time, so an endless line costs no memory.
    """
    inHeaders = True
    atLineStart = True
    remaining = bodyLines
    # At a line start, two octets always hold a whole blank line.
    size = max(chunkSize, 2)
    while True:
        if not inHeaders and atLineStart:
            if remaining <= 0:
                return
            remaining -= 1
        line = f.readline(size)
        if not line:
            return
        if inHeaders and atLineStart and line in (b"\r\n", b"\n"):
            inHeaders = False
        atLineStart = line.endswith(b"\n")
        yield line


@implementer(IPullProducer)
class MessageProducer:
    """
    Streams one message to a consumer, one bounded chunk per
    L{resumeProducing}: memory use does not depend on the message size, and
    the consumer's buffer (the transport's backpressure) decides the pace.

    @ivar deferred: fires with L{None} once the terminating C{.CRLF} is
        written and the producer is unregistered, or fails if reading the
        file failed or the connection went away first.
    """

    def __init__(
        self,
        consumer: IConsumer,
        f: IO[bytes],
        chunks: Iterator[bytes],
        chunkSize: int,
        progress: Optional[Callable[[], None]] = None,
    ) -> None:
        self._consumer = consumer
        self._file: Optional[IO[bytes]] = f
        self._chunks = chunks
        self._chunkSize = chunkSize
        self._progress = progress
        self._stuffer = DotStuffer()
        self.deferred: Deferred = Deferred()

    def start(self) -> Deferred:
        """
        Register with the consumer (a pull producer) and begin.
        """
        self._consumer.registerProducer(self, False)
        return self.deferred

    def _read(self) -> bytes:
        # TOP yields a line at a time: gather them into one write.
        pieces = []
        size = 0
        for piece in self._chunks:
            pieces.append(piece)
            size += len(piece)
            if size >= self._chunkSize:
                break
        return b"".join(pieces)

    def resumeProducing(self) -> None:
        if self._file is None:
            return
        try:
            data = self._read()
        except Exception:
            self._finish(Failure())
            return
        if data:
            self._consumer.write(self._stuffer.feed(data))
            if self._progress is not None:
                self._progress()
            return
        self._consumer.write(self._stuffer.end())
        self._finish(None)

    def pauseProducing(self) -> None:
        # Only a pull producer: the TLS wrapper may still call this.
        pass

    def stopProducing(self) -> None:
        if self._file is not None:
            self._finish(Failure(ConnectionLost("the connection went away while sending a message")), unregister=False)

    def _finish(self, result: Optional[Failure], unregister: bool = True) -> None:
        f, self._file = self._file, None
        if f is not None:
            f.close()
        if unregister:
            self._consumer.unregisterProducer()
        if result is None:
            self.deferred.callback(None)
        else:
            self.deferred.errback(result)
