# -*- test-case-name: tests.test_smtp_server -*-
"""
Message content on its way in: undoing DATA's dot-stuffing and finding its
end, and checking what the client sent, chunk by chunk.

Both work on whole chunks with C{bytes.find}, C{bytes.replace} and
compiled regular expressions, not on lines in Python, and keep at most a
few bytes between chunks, so a connection holds one chunk at a time however
large the message or its lines.  The common case costs a few passes at C
speed per chunk: a chunk without a period cannot hold a dot-stuffed line or
the terminator (one C{memchr}), and line lengths are checked by jumping
from line end to line end about 1000 octets at a time.
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
# Lines are measured up to their LF, so the CR counts: at most 999 octets
# come before an LF.
_BEFORE_LF = MAX_LINE + 1

# RFC 5321 §2.3.8: a CR not followed by LF, an LF not preceded by CR.  Each
# starts with a literal, which the regular expression engine looks for in a
# tight loop, so a chunk costs little more than a pass per pattern.
_BARE_CR = re.compile(rb"\r(?!\n)")
_BARE_LF = re.compile(rb"\n(?<!\r\n)")

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
        if b"." not in data and b"." not in self._held:
            return self._feedUndotted(data), None
        scan = self._context + self._held + data
        skip = len(self._context)
        # Both the terminator and a stuffed line start with <CRLF>.; the
        # context is too short to hold one, so the scan starts in it.
        first = scan.find(b"\r\n.")
        if first >= 0:
            end = scan.find(_TERMINATOR, first)
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
        if first < 0 or first >= len(done) - 2:
            # No line of C{done} starts with a period.
            return done[skip:], None
        # RFC 5321 §4.5.2: a line starting with a period has it removed.
        return done.replace(b"\r\n.", b"\r\n")[skip:], None

    def _feedUndotted(self, data: bytes) -> bytes:
        """
        L{feed} for C{data} when neither it nor the held bytes hold a
        period: there is no terminator and nothing to unstuff, only a CR
        or CRLF at the end to hold back, as in L{feed}.
        """
        scan = self._held + data if self._held else data
        # Only the dotless prefixes of the terminator, CRLF and CR, can end
        # the scan; the context counts for a CRLF split before the data.
        tail = (self._context + scan[-2:])[-2:]
        if tail == b"\r\n":
            hold = min(2, len(scan))
        elif tail.endswith(b"\r"):
            hold = 1
        else:
            hold = 0
        done = scan[: len(scan) - hold] if hold else scan
        self._held = scan[len(scan) - hold :] if hold else b""
        self._context = (self._context + done[-2:])[-2:]
        return done


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
        start = 0
        if self._last == b"\r":
            # The CR that ended the previous chunk needs this LF.
            if data[:1] != b"\n":
                self.bareLineEnding = True
                return
            start = 1
        # A CR at the very end is judged with the next chunk (or at
        # finish): the search stops before it.  The LF search may look
        # back before C{start}, at the byte just judged.
        end = len(data) - 1 if data.endswith(b"\r") else len(data)
        if _BARE_LF.search(data, start) is not None or _BARE_CR.search(data, 0, end) is not None:
            self.bareLineEnding = True

    def _checkLineLength(self, data: bytes) -> None:
        # RFC 5321 §4.5.3.1.6.  Rather than visit every line, jump from an
        # LF to the last LF within the next 999 + 1 octets: every line in
        # between is short enough, and if there is none, the line is too
        # long.  The unfinished line from the previous chunk has used
        # C{self._run} octets of its allowance already.
        size = len(data)
        lf = data.find(b"\n", 0, _BEFORE_LF - self._run + 1)
        if lf < 0:
            self._run += size
        else:
            while lf + _BEFORE_LF + 1 < size:
                lf = data.rfind(b"\n", lf + 1, lf + _BEFORE_LF + 2)
                if lf < 0:
                    self.lineTooLong = True
                    return
            self._run = size - 1 - data.rfind(b"\n", lf)
        # An unfinished line is too long already with 999 octets but a CR.
        if self._run > _BEFORE_LF or (self._run == _BEFORE_LF and data[-1:] != b"\r"):
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
        for _name, address in getaddresses(values):
            addresses.append(address.strip().lower())
        if values and not addresses:
            addresses.append("")
        return addresses
