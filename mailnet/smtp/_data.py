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
from typing import List, Optional, Set, Tuple

from mailnet.message import FIELD_NAME, AddressSyntaxError, fieldValue, mailboxAddresses

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

# The largest header section accepted, on every port (Postfix's
# header_size_limit): it is held in memory until it is complete.
MAX_HEADER_SECTION = 102400

# Header fields a client may not set (as Postfix's message_drop_headers):
# the delivering MTA writes Return-Path (RFC 5321 §4.4), and Bcc must not
# reach the recipients (RFC 5322 §3.6.3).
DROPPED_FIELDS = frozenset({b"return-path", b"bcc", b"resent-bcc"})

# What becomes of a header field's lines: kept, dropped, or kept and read.
_KEEP, _DROP, _COLLECT = range(3)


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

    def __init__(self, maxSize: int) -> None:
        self.maxSize = maxSize
        self.size = 0
        self.tooBig = False
        self.bareLineEnding = False
        self.lineTooLong = False
        self.nul = False
        self._last = b"\n"
        self._run = 0

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

    def finish(self) -> None:
        """The message is complete: judge what is still pending."""
        if self._last == b"\r":
            self.bareLineEnding = True



class HeaderSection:
    """
    Hold the header section (RFC 5322 §2.1) of a message as it streams in,
    look at it, and let it through without the fields in
    L{DROPPED_FIELDS}; the body then passes untouched.

    The section ends at the blank line, or at a line that is neither a
    field nor a continuation (which is then the first body line, as
    Postfix treats it; L{malformed} says so).  At most
    L{MAX_HEADER_SECTION} octets are held: past that L{tooLarge} is set and
    nothing more is let through.

    @ivar complete: the section has ended (at the blank line, a body line,
        or the end of the message).
    @ivar received: how many C{Received:} fields it has (RFC 5321 §6.3).
    @ivar deliveredTo: the addresses of its C{Delivered-To:} fields,
        lower-cased.
    @ivar fromFields: the values of its C{From:} fields (unfolded).
    @ivar malformed: a line was neither a field, a continuation nor blank.
    """

    def __init__(self, limit: int = MAX_HEADER_SECTION) -> None:
        self.limit = limit
        self.complete = False
        self.tooLarge = False
        self.malformed = False
        self.received = 0
        self.deliveredTo: Set[str] = set()
        self.fromFields: List[str] = []
        self._held: List[bytes] = []
        self._heldBytes = 0
        # What becomes of the lines of the field being read (None before the
        # first field), and the lines of a From: or Delivered-To: field.
        self._mode: Optional[int] = None
        self._value: List[bytes] = []
        self._partial: List[bytes] = []

    def feed(self, data: bytes) -> bytes:
        """
        @return: the bytes to store now: nothing while the header section
            is incomplete, then the filtered section and the rest.
        """
        if self.complete:
            return data
        if self.tooLarge:
            return b""
        self._heldBytes += len(data)
        end = data.find(b"\n")
        if end < 0:
            # Pieces of one line are joined only once it is complete.
            self._partial.append(data)
            return self._checkSize()
        if self._partial:
            self._partial.append(data)
            buffer = b"".join(self._partial)
            end += len(buffer) - len(data)
            self._partial = []
        else:
            buffer = data
        start = 0
        held = self._held
        while end >= 0:
            line = buffer[start : end + 1]
            first = line[:1]
            if first == b" " or first == b"\t":
                mode = self._mode
                if mode is None:
                    # A continuation of nothing: not a header section.
                    return self._end(buffer, start, malformed=True)
                if mode != _DROP:
                    held.append(line)
                    if mode == _COLLECT:
                        self._value.append(line)
            else:
                if self._mode == _COLLECT:
                    self._collected()
                match = FIELD_NAME.match(line)
                if match is None:
                    # The blank line, or a first body line: both are body.
                    return self._end(buffer, start, malformed=line not in (b"\r\n", b"\n"))
                self._field(match.group(1), line)
            start = end + 1
            end = buffer.find(b"\n", start)
        if start < len(buffer):
            self._partial.append(buffer[start:])
        return self._checkSize()

    def _field(self, name: bytes, line: bytes) -> None:
        """A field starts with C{line}: decide what becomes of it."""
        # Most fields are none of ours: one look at the first letter.
        if name[:1] not in b"RrDdFfBb":
            self._mode = _KEEP
            self._held.append(line)
            return
        name = name.lower()
        if name in DROPPED_FIELDS:
            self._mode = _DROP
            return
        if name == b"received":
            self.received += 1
        self._held.append(line)
        if name == b"from" or name == b"delivered-to":
            self._mode = _COLLECT
            self._value = [line]
        else:
            self._mode = _KEEP

    def _collected(self) -> None:
        """A From: or Delivered-To: field is complete."""
        field, self._value = b"".join(self._value), []
        name = FIELD_NAME.match(field).group(1).lower()  # type: ignore[union-attr]
        if name == b"from":
            self.fromFields.append(fieldValue(field))
            return
        try:
            self.deliveredTo.update(a for a in mailboxAddresses(fieldValue(field)) if a)
        except AddressSyntaxError:
            pass  # not one we wrote

    def _end(self, buffer: bytes, start: int, malformed: bool) -> bytes:
        """The header section ended where C{buffer[start:]} begins."""
        # What came before C{buffer} was counted already.
        if self._heldBytes - len(buffer) + start > self.limit:
            self._heldBytes = self.limit + 1
            return self._checkSize()
        self.malformed = malformed
        self.complete = True
        self._mode = None
        return self._release() + buffer[start:]

    def _checkSize(self) -> bytes:
        if self._heldBytes > self.limit:
            self.tooLarge = True
            self._held, self._value, self._partial = [], [], []
        return b""

    def finish(self) -> bytes:
        """
        The message ended: what is still held, filtered (a message may be
        all header, without a blank line).
        """
        if self.complete or self.tooLarge:
            return b""
        partial = b"".join(self._partial)
        self._partial = []
        # It is fed again below.
        self._heldBytes -= len(partial)
        if not partial:
            if self._mode == _COLLECT:
                self._collected()
            return self._end(b"", 0, malformed=False)
        # The last line has no line ending: read it as if it had one, then
        # take that line ending off again if the line was kept.
        out = self.feed(partial + b"\r\n")
        if self.tooLarge:
            return b""
        if self.complete:
            return out[:-2]  # the line began the body
        kept = self._mode != _DROP
        if self._mode == _COLLECT:
            self._collected()
        out = self._end(b"", 0, malformed=False)
        if self.tooLarge:
            return b""
        return out[:-2] if kept else out

    def _release(self) -> bytes:
        held, self._held = self._held, []
        return b"".join(held)

    def fromAddresses(self) -> List[str]:
        """
        @return: the addresses in the C{From:} fields (RFC 5322 §3.6.2,
            and the obsolete C{From :} of §4.5.2), lower-cased; C{[""]}
            for a field that gives none.
        @raise mailnet.message.AddressSyntaxError: a field is too deeply
            nested to read.
        """
        addresses = []
        for value in self.fromFields:
            found = mailboxAddresses(value)
            addresses.extend(found or [""])
        return addresses
