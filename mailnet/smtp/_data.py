# -*- test-case-name: tests.test_smtp_server -*-
"""
Message content on its way in: undoing DATA's dot-stuffing and finding its
end, and checking what the client sent, chunk by chunk.

Both work on whole chunks with C{bytes.find}, C{bytes.replace} and
compiled regular expressions, not on lines in Python, and keep at most a
few bytes between chunks, so a connection holds one chunk at a time however
large the message or its lines.
"""

import re
from email.parser import HeaderParser
from email.policy import compat32
from email.utils import getaddresses
from typing import List, Optional, Tuple

# RFC 5321 §4.1.1.4: the end of mail data is <CRLF>.<CRLF>, and nothing else
# (§4.1.1.4 and RFC 5321 errata on SMTP smuggling: not <LF>.<LF>, not
# <CR>.<CR>, not <LF>.<CRLF>).
_TERMINATOR = b"\r\n.\r\n"
# The proper prefixes of the terminator, longest first: a chunk ending in
# one of them is held back until the next chunk says what it is.
_PREFIXES = tuple(_TERMINATOR[:n] for n in range(4, 0, -1))


# RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including the
# CRLF, not counting the leading dot added for transparency.
MAX_LINE = 998
# Anchored at an LF so that the search stays linear: a line (from an LF)
# with more than 998 octets and its CR before the next LF.
_LONG = re.compile(rb"\n[^\n]{%d}" % (MAX_LINE + 2,))

# The header section kept to check From: (Postfix's header_size_limit).
MAX_HEADER_SECTION = 102400


class DotDecoder:
    """
    Turn the DATA stream (RFC 5321 §4.5.2 dot-stuffed) into message bytes
    and find its end.
    """

    def __init__(self) -> None:
        # The last two raw bytes already handled; DATA starts at the
        # beginning of a line, as if after a CRLF.
        self._context = b"\r\n"
        self._held = b""

    def feed(self, data: bytes) -> Tuple[bytes, Optional[bytes]]:
        """
        @return: C{(message bytes, rest)}: the decoded bytes of C{data}
            that are certainly message content, and, once the terminator
            has been seen, the bytes that followed it (L{None} before).
        """
        scan = self._context + self._held + data
        skip = len(self._context)
        end = scan.find(_TERMINATOR)
        if end >= 0:
            # The terminator's leading CRLF ends the last line of the message.
            body = scan[: end + 2]
            return body.replace(b"\r\n.", b"\r\n")[skip:], scan[end + 5 :]
        hold = 0
        for prefix in _PREFIXES:
            if scan.endswith(prefix):
                hold = min(len(prefix), len(scan) - skip)
                break
        done = scan[: len(scan) - hold]
        self._held = scan[len(scan) - hold :]
        self._context = done[-2:]
        # RFC 5321 §4.5.2: a line starting with a period has it removed.
        return done.replace(b"\r\n.", b"\r\n")[skip:], None


class MessageChecker:
    """
    Watch the message bytes as they stream past: size, bare CR or LF, line
    length and (when asked) the header section, all in bounded memory.

    @ivar size: octets seen so far.
    @ivar tooBig: more than C{maxSize} octets were seen.
    @ivar bareLineEnding: a CR or LF was not part of a CRLF.
    @ivar lineTooLong: a line was longer than 1000 octets with its CRLF.
    @ivar nul: a NUL octet was seen (RFC 5322 §2.3 and RFC 6152 §3 forbid
        it in 7bit and 8bitmime content).
    """

    def __init__(self, maxSize: int, keepHeaders: bool = False) -> None:
        self.maxSize = maxSize
        self.size = 0
        self.tooBig = False
        self.bareLineEnding = False
        self.lineTooLong = False
        self.nul = False
        self._last = b"\n"
        self._run = 0
        self._keepHeaders = keepHeaders
        self._headers: List[bytes] = []
        self._headerBytes = 0
        self._headerTail = b"\r\n"
        self.headersComplete = False
        self.headersTooLarge = False

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self.size > self.maxSize:
            self.tooBig = True
        if not self.bareLineEnding:
            self._checkLineEndings(data)
        if not self.lineTooLong:
            self._checkLineLength(data)
        if not self.nul and b"\0" in data:
            self.nul = True
        if self._keepHeaders and not (self.headersComplete or self.headersTooLarge):
            self._collectHeaders(data)
        self._last = data[-1:]

    def _checkLineEndings(self, data: bytes) -> None:
        if self._last == b"\r":
            # The CR that ended the previous chunk needs this LF.
            if data[:1] != b"\n":
                self.bareLineEnding = True
                return
            data = data[1:]
        if data.endswith(b"\r"):
            data = data[:-1]  # judged with the next chunk (or at finish)
        # Every CR and every LF belongs to a CRLF exactly when the counts agree.
        pairs = data.count(b"\r\n")
        if data.count(b"\r") != pairs or data.count(b"\n") != pairs:
            self.bareLineEnding = True

    def _checkLineLength(self, data: bytes) -> None:
        # Lines are measured up to their LF, so the CR counts: 999 at most.
        first = data.find(b"\n")
        if first < 0:
            self._run += len(data)
        else:
            self._run += first
            if self._run > MAX_LINE + 1 or _LONG.search(data, first) is not None:
                self.lineTooLong = True
            self._run = len(data) - 1 - data.rfind(b"\n")
        # An unfinished line is too long already with 999 octets but a CR.
        if self._run > MAX_LINE + 1 or (self._run == MAX_LINE + 1 and data[-1:] != b"\r"):
            self.lineTooLong = True

    def _collectHeaders(self, data: bytes) -> None:
        # The blank line ending the header section may straddle chunks.
        room = MAX_HEADER_SECTION - self._headerBytes
        piece = data[: room + 1]
        joined = self._headerTail + piece
        end = joined.find(b"\r\n\r\n")
        if end >= 0:
            keep = end + 2 - len(self._headerTail)
            if keep > 0:
                self._headers.append(piece[:keep])
            self.headersComplete = True
            return
        if len(piece) > room:
            self.headersTooLarge = True
            return
        self._headers.append(piece)
        self._headerBytes += len(piece)
        self._headerTail = joined[-3:]

    def finish(self) -> None:
        """The message is complete: judge what is still pending."""
        if self._last == b"\r":
            self.bareLineEnding = True
        if self._keepHeaders and not self.headersTooLarge:
            self.headersComplete = True

    def fromAddresses(self) -> List[str]:
        """
        @return: the addresses in the C{From:} fields of the header section
            (RFC 5322 §3.6.2), lower-cased; empty if there is none.
        """
        # RFC 6532: header fields may hold UTF-8 (with SMTPUTF8).
        raw = b"".join(self._headers).decode("utf-8", "replace")
        message = HeaderParser(policy=compat32).parsestr(raw)
        values = [str(v) for v in message.get_all("From", [])]
        addresses = []
        for name, address in getaddresses(values):
            addresses.append(address.strip().lower())
        if values and not addresses:
            addresses.append("")
        return addresses
