# -*- test-case-name: tests.test_imap_fetch,tests.test_imap_server -*-
"""
FETCH: the attribute list from parsed tokens (RFC 9051 §6.4.5), and the
assembly of the responses, with message octets read in threads and
streamed in wire form (CRLF).
"""

import calendar
import re
import time
from typing import IO, Any, Callable, Dict, List, Optional, Tuple

import attr
from twisted.internet.defer import gatherResults

from mailnet.errors import MessageGone
from mailnet.imap import _render
from mailnet.imap._parser import Atom

#: Octets read from a message file at a time.
CHUNK_SIZE = 64 * 1024


class FetchSyntaxError(ValueError):
    """
    A FETCH attribute could not be parsed; C{str(error)} is the BAD text.
    """


@attr.s(frozen=True, slots=True)
class SectionSpec:
    """
    A section as the client asked for it (the same fields as
    L{mailnet.imap._render.Section}).
    """

    part: Tuple[int, ...] = attr.ib(default=())
    text: Optional[str] = attr.ib(default=None)
    fields: Tuple[bytes, ...] = attr.ib(default=())
    partial: Optional[Tuple[int, int]] = attr.ib(default=None)
    # How the client spelled the field names, for the response label.
    fieldNames: Tuple[bytes, ...] = attr.ib(default=(), eq=False)


@attr.s(frozen=True, slots=True)
class FetchItem:
    """
    One FETCH attribute.

    @ivar name: C{"FLAGS"}, C{"UID"}, C{"INTERNALDATE"}, C{"RFC822.SIZE"},
        C{"ENVELOPE"}, C{"BODY"}, C{"BODYSTRUCTURE"}, C{"MODSEQ"} or
        C{"SECTION"} (any C{BODY[...]}, C{RFC822},
        C{RFC822.HEADER}, C{RFC822.TEXT}).
    @ivar label: for sections, the name in the response
        (C{b"BODY[HEADER]<0>"}, C{b"RFC822.HEADER"}).
    @ivar setsSeen: fetching it sets C{\\Seen}.
    """

    name: str = attr.ib()
    section: Optional[SectionSpec] = attr.ib(default=None)
    label: bytes = attr.ib(default=b"")
    setsSeen: bool = attr.ib(default=False)


_SIMPLE = {
    b"FLAGS": "FLAGS",
    b"UID": "UID",
    b"INTERNALDATE": "INTERNALDATE",
    b"RFC822.SIZE": "RFC822.SIZE",
    b"ENVELOPE": "ENVELOPE",
    b"BODY": "BODY",
    b"BODYSTRUCTURE": "BODYSTRUCTURE",
    b"MODSEQ": "MODSEQ",
}

_MACROS = {
    b"ALL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE"],
    b"FAST": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE"],
    b"FULL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY"],
}

_SECTION = re.compile(rb"(BODY|BODY\.PEEK|BINARY|BINARY\.PEEK|BINARY\.SIZE)\[([^\]]*)\](?:<([0-9]{1,10})\.([0-9]{1,10})>)?\Z", re.I)
_PART = re.compile(rb"[1-9][0-9]{0,5}\Z")
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]{1,200}\Z")


def parseSection(spec: bytes) -> SectionSpec:
    """
    The inside of C{BODY[...]}: C{1.2.HEADER.FIELDS (From To)}.

    @raise FetchSyntaxError: not a section.
    """
    head, _, rest = spec.partition(b" ")
    pieces = head.split(b".") if head else []
    part: List[int] = []
    while pieces and _PART.match(pieces[0]):
        part.append(int(pieces.pop(0)))
    if len(part) > 50:
        raise FetchSyntaxError("Section too deep")
    text = b".".join(pieces).upper().decode("ascii", "replace") if pieces else None
    if text not in (None, "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"):
        raise FetchSyntaxError("Invalid section")
    if text == "MIME" and not part:
        raise FetchSyntaxError("MIME needs a part number")
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        rest = rest.strip()
        if not (rest.startswith(b"(") and rest.endswith(b")")):
            raise FetchSyntaxError("Header field list expected")
        names = []
        for name in _fieldNames(rest[1:-1]):
            if not _FIELD_NAME.match(name):
                raise FetchSyntaxError("Invalid header field name")
            names.append(name)
        if not names:
            raise FetchSyntaxError("Empty header field list")
        return SectionSpec(tuple(part), text, tuple(n.upper() for n in names), None, tuple(names))
    if rest.strip():
        raise FetchSyntaxError("Invalid section")
    return SectionSpec(tuple(part), text)


def _fieldNames(inner: bytes) -> List[bytes]:
    names = []
    for token in re.findall(rb'"(?:[^"\\]|\\.)*"|[^ ]+', inner):
        if token.startswith(b'"'):
            token = re.sub(rb"\\(.)", rb"\1", token[1:-1])
        names.append(token)
    return names


def sectionLabel(kind: bytes, section: SectionSpec) -> bytes:
    """
    @return: the name of a section in the response: C{BODY[1.HEADER]<0>}.
    """
    inner = b".".join([b"%d" % (p,) for p in section.part] + ([section.text.encode("ascii")] if section.text else []))
    if section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        inner += b" (" + b" ".join(section.fieldNames) + b")"
    label = kind + b"[" + inner + b"]"
    if section.partial is not None:
        label += b"<%d>" % (section.partial[0],)
    return label


def parseFetchAttributes(arg: Any) -> List[FetchItem]:
    """
    FETCH's second argument: a macro, one attribute, or a list of them.

    @raise FetchSyntaxError: anything else.
    """
    if isinstance(arg, Atom) and arg.upper() in _MACROS:
        return [_item(Atom(name)) for name in _MACROS[arg.upper()]]
    tokens = arg if isinstance(arg, list) else [arg]
    if not tokens:
        raise FetchSyntaxError("Empty FETCH attribute list")
    return [_item(token) for token in tokens]


def _item(token: Any) -> FetchItem:
    if not isinstance(token, Atom):
        raise FetchSyntaxError("Invalid FETCH attribute")
    name = token.upper()
    if name in _SIMPLE:
        return FetchItem(_SIMPLE[name])
    if name == b"RFC822":
        return FetchItem("SECTION", SectionSpec(), b"RFC822", setsSeen=True)
    if name == b"RFC822.HEADER":
        return FetchItem("SECTION", SectionSpec((), "HEADER"), b"RFC822.HEADER")
    if name == b"RFC822.TEXT":
        return FetchItem("SECTION", SectionSpec((), "TEXT"), b"RFC822.TEXT", setsSeen=True)
    match = _SECTION.match(token.value)
    if match is None:
        raise FetchSyntaxError("Invalid FETCH attribute")
    kind = match.group(1).upper()
    section = parseSection(match.group(2))
    if match.group(3) is not None:
        count = int(match.group(4))
        if count == 0:
            raise FetchSyntaxError("Partial count must not be 0")
        section = attr.evolve(section, partial=(int(match.group(3)), count))
    if kind.startswith(b"BINARY"):
        # RFC 3516: part numbers only; the content decoded.
        if section.text is not None:
            raise FetchSyntaxError("BINARY takes part numbers only")
        if kind == b"BINARY.SIZE":
            if section.partial is not None:
                raise FetchSyntaxError("BINARY.SIZE takes no partial")
            return FetchItem("BINARY.SIZE", section, sectionLabel(b"BINARY.SIZE", section))
        return FetchItem("BINARY", section, sectionLabel(b"BINARY", section), setsSeen=kind == b"BINARY")
    return FetchItem("SECTION", section, sectionLabel(b"BODY", section), setsSeen=not kind.endswith(b".PEEK"))


def applyPartial(wireLength: int, partial: Optional[Tuple[int, int]]) -> Tuple[int, int]:
    """
    @return: C{(skip, count)}: the octets of a section to leave out and
        then send, for C{<origin.count>} (RFC 9051 §6.4.5: an origin past
        the end sends nothing).
    """
    if partial is None:
        return 0, wireLength
    origin, count = partial
    if origin >= wireLength:
        return wireLength, 0
    return origin, min(count, wireLength - origin)


_BARE_LF = re.compile(rb"(?<!\r)\n")


def toWire(data: bytes, afterCR: bool = False) -> bytes:
    """
    Stored octets as wire octets: each LF not preceded by a CR becomes
    CRLF; a CRLF already stored (files other programs wrote) stays as it
    is, as mime's wire offsets and the store's wire sizes count it.

    @param afterCR: the octet before C{data} (the previous chunk's last)
        was a CR, so a leading LF completes a CRLF.
    """
    if b"\r" in data:
        wire = _BARE_LF.sub(b"\r\n", data)
    else:
        wire = data.replace(b"\n", b"\r\n")
    if afterCR and data[:1] == b"\n":
        wire = wire[1:]
    return wire


class WireReader:
    """
    Reads a stored range of a message (LF line endings) as wire octets
    (CRLF), leaving out the first C{skip} and giving exactly C{count}: if
    the file turns out shorter than the index said, the rest is spaces,
    so that the literal announced stays true.  A NUL (which no literal may
    hold) is sent as a space.  Its methods block: call
    them in a thread.
    """

    def __init__(self, f: IO[bytes], storedStart: int, storedEnd: Optional[int], skip: int, count: int) -> None:
        self._file = f
        self._position = storedStart
        self._end = storedEnd
        self._skip = skip
        self.remaining = count
        self._started = False
        self._afterCR = False

    def read(self, size: int = CHUNK_SIZE) -> bytes:
        """
        @return: up to about C{size} wire octets; C{b""} when done.
        """
        if not self._started:
            self._file.seek(self._position)
            self._started = True
        out: List[bytes] = []
        produced = 0
        while self.remaining > 0 and produced < size:
            want = size if self._end is None else min(size, self._end - self._position)
            data = self._file.read(want) if want > 0 else b""
            if not data:
                filler = b" " * min(self.remaining, size)
                self.remaining -= len(filler)
                out.append(filler)
                break
            self._position += len(data)
            # RFC 9051 §4.3: no NUL in a literal (BINARY sends those).
            wire = toWire(data, self._afterCR).replace(b"\0", b" ")
            self._afterCR = data[-1:] == b"\r"
            if self._skip:
                if self._skip >= len(wire):
                    self._skip -= len(wire)
                    continue
                wire = wire[self._skip :]
                self._skip = 0
            if len(wire) > self.remaining:
                wire = wire[: self.remaining]
            self.remaining -= len(wire)
            produced += len(wire)
            out.append(wire)
        return b"".join(out)

    def close(self) -> None:
        self._file.close()


_MONTHS = [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"]


def internalDate(seconds: float) -> bytes:
    """
    @return: RFC 9051 date-time, quoted, in UTC: C{"05-Dec-2026 22:56:44 +0000"}.
    """
    t = time.gmtime(seconds)
    return b'"%2d-%s-%04d %02d:%02d:%02d +0000"' % (t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


_DATE_TIME = re.compile(
    rb"\s?([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})\Z"
)


def parseInternalDate(text: bytes) -> float:
    """
    APPEND's date-time (RFC 9051 §9).

    @raise ValueError: not one.
    """
    match = _DATE_TIME.match(text)
    if match is None:
        raise ValueError("Invalid date-time")
    day, month, year, hh, mm, ss, sign, zh, zm = match.groups()
    try:
        monthNumber = [m.upper() for m in _MONTHS].index(month.upper()) + 1
    except ValueError:
        raise ValueError("Invalid month")
    seconds = calendar.timegm((int(year), monthNumber, int(day), int(hh), int(mm), int(ss), 0, 0, 0))
    offset = (int(zh) * 60 + int(zm)) * 60
    return float(seconds - offset if sign == b"+" else seconds + offset)


# --- running a FETCH (awaits Deferreds from the store; used by server.py) ------


def _needsParsed(item: FetchItem) -> bool:
    if item.name in ("ENVELOPE", "BODY", "BODYSTRUCTURE"):
        return True
    if item.name in ("BINARY", "BINARY.SIZE"):
        return True
    if item.name == "SECTION":
        section = item.section
        assert section is not None
        return bool(section.part) or section.text not in (None,)
    return False


def _renderSection(section: SectionSpec) -> Any:
    return _render.Section(part=section.part, text=section.text, fields=section.fields, partial=section.partial)


def resolve(parsed: Any, record: Any, section: SectionSpec) -> Any:
    """
    @return: the section's wire octets (L{bytes}), or C{(storedStart,
        storedEnd, wireLength)} to stream from the file (C{storedEnd}
        L{None}: to the end).
    """
    if not section.part and section.text is None:
        # The whole message: no need for its structure.
        return (0, None, record.size)
    data = _render.resolveSection(parsed, _renderSection(section))
    if isinstance(data, bytes):
        return data
    return (data.storedStart, data.storedEnd, data.wireLength)


class UnknownEncoding(Exception):
    """
    RFC 3516 §4.3: BINARY of a part whose Content-Transfer-Encoding we
    cannot decode (the server answers NO [UNKNOWN-CTE]).
    """


def binaryJob(parsed: Any, record: Any, section: SectionSpec) -> Optional[Tuple[int, Optional[int], str]]:
    """
    @return: C{(storedStart, storedEnd, encoding)} of the part BINARY asks
        for (the whole message for C{BINARY[]}), or L{None} for an
        encoding that cannot be decoded.
    """
    if not section.part:
        return (0, None, "8bit")
    part = _render._child(parsed, section.part)
    if part is None:
        return (0, 0, "8bit")
    encoding = (part.encoding or "7bit").lower()
    if encoding not in ("7bit", "8bit", "binary", "base64", "quoted-printable"):
        return None
    return (part.storedBodyStart, part.storedEnd, encoding)


_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")


def decodeQuotedPrintable(raw: bytes) -> bytes:
    """
    RFC 2045 §6.7: trailing white space on a line is dropped, a line
    ending in C{=} continues on the next, C{=XX} is an octet; a malformed
    C{=} is kept as it is.  Line ends come out as CRLF.
    """
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
        ending = True
    else:
        ending = False
    out = []
    for i, line in enumerate(lines):
        line = line.rstrip(b" \t\r")
        last = i == len(lines) - 1
        if line.endswith(b"="):
            out.append(_QP_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), line[:-1]))
            continue
        out.append(_QP_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), line))
        if not last or ending:
            out.append(b"\r\n")
    return b"".join(out)


def _decodeParts(jobs: List[Tuple[Any, int, Optional[int], str]]) -> List[bytes]:
    """
    Read and decode parts for BINARY (in a thread): C{(file, storedStart,
    storedEnd, encoding)} each.  Text comes out with CRLF line endings.
    """
    import binascii

    out = []
    for f, start, end, encoding in jobs:
        f.seek(start)
        raw = f.read() if end is None else f.read(max(0, end - start))
        if encoding == "base64":
            try:
                data = binascii.a2b_base64(raw)
            except binascii.Error:
                data = b""
        elif encoding == "quoted-printable":
            data = decodeQuotedPrintable(raw)
        elif encoding == "binary":
            data = raw  # as stored: octets, not lines
        else:
            data = toWire(raw)
        out.append(data)
    return out


#: A section up to this size is read with the others of its group, at once.
SMALL = 64 * 1024


def _readSmall(jobs: List[Tuple[Any, int, Optional[int], int, int]]) -> List[bytes]:
    """
    Read small sections (in a thread): C{(file, storedStart, storedEnd,
    skip, count)} each, in wire form.
    """
    return [WireReader(f, start, end, skip, count).read(count) if count else b"" for f, start, end, skip, count in jobs]


#: Responses are written in pieces of about this size (then the session
#: waits until the transport wants more).
WRITE_CHUNK = 64 * 1024


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n%s" % (len(data), data)


async def runFetch(session: Any, view: Any, uids: List[int], items: List[FetchItem], gate: Any) -> Optional[str]:
    """
    Send the FETCH responses for C{uids}: message data from the view and
    the store's parsed cache; section octets from the files, read in
    threads (C{session.factory.run}), large ones streamed as the transport
    takes them (C{gate}, an output producer the caller registered).

    @return: the tagged OK text, or L{None} for the default.
    """
    folder = view.folder
    run = session.factory.run
    needParsed = any(_needsParsed(item) for item in items)
    setsSeen = any(item.setsSeen for item in items) and not view.readOnly
    wantsFlags = any(item.name == "FLAGS" for item in items)
    out: List[bytes] = []
    outSize = 0
    gone = False
    # Sequence numbers by UID, and FLAGS items by flag set, once per FETCH.
    seqs = {u: i for i, u in enumerate(view.uids, 1)} if len(uids) > 64 else None
    flagCache: Dict[Any, bytes] = {}

    def flagsOf(record: Any) -> bytes:
        key = (record.flags, record.uid in view.recent)
        item = flagCache.get(key)
        if item is None:
            item = flagCache[key] = session.flagsItem(record)
        return item

    names = [item.name for item in items]
    if names in (["UID", "FLAGS"], ["FLAGS", "UID"], ["FLAGS"]) and not setsSeen:
        # A client's flag resync (UID FETCH 1:* (FLAGS)), the most
        # frequent large FETCH: one formatting per message.
        return await _fetchFlags(session, view, uids, names, flagsOf, gate)
    batchSize = 1024 if needParsed else 4096
    for start in range(0, len(uids), batchSize):
        if session.view is not view or gate.stopped:
            return None
        if start:
            # Let other sessions run between batches of a large FETCH.
            if out:
                session._write(b"".join(out))
                out, outSize = [], 0
            await session.yieldToOthers()
        getRecord = view.records.get
        batch = [u for u in uids[start : start + batchSize] if getRecord(u) is not None]
        flagsChanged = set()
        if setsSeen:
            unseen = [u for u in batch if "\\Seen" not in view.records[u].flags]
            if unseen:
                changed, _ = await folder.setFlags(unseen, frozenset(["\\Seen"]), "+")
                announce = session.keywordLines(changed)
                if announce:
                    out.extend(line + b"\r\n" for line in announce)
                for record in changed:
                    if record.uid in view.records:
                        view.records[record.uid] = record
                        flagsChanged.add(record.uid)
        parsedMap = await folder.parsed(batch) if needParsed else {}
        prepared: List[Tuple[int, int, List[Any]]] = []
        streamed = False
        for uid in batch:
            seq = seqs.get(uid, 0) if seqs is not None else view.seqOf(uid)
            record = getRecord(uid)
            if not seq or record is None:
                continue
            parsed = parsedMap.get(uid)
            if needParsed and parsed is None:
                gone = True
                continue
            pieces: List[Any] = []
            for item in items:
                name = item.name
                if name == "UID":
                    pieces.append(b"UID %d" % (uid,))
                elif name == "FLAGS":
                    pieces.append(flagsOf(record))
                elif name == "INTERNALDATE":
                    pieces.append(b"INTERNALDATE " + internalDate(record.internalDate))
                elif name == "RFC822.SIZE":
                    pieces.append(b"RFC822.SIZE %d" % (record.size,))
                elif name == "MODSEQ":
                    pieces.append(b"MODSEQ (%d)" % (record.modSeq,))
                elif name == "ENVELOPE":
                    assert parsed is not None
                    pieces.append(b"ENVELOPE " + _render.messageEnvelope(parsed))
                elif name in ("BODY", "BODYSTRUCTURE"):
                    assert parsed is not None
                    structure = _render.bodyStructure(parsed.root, name == "BODYSTRUCTURE", rev2=session.rev2)
                    pieces.append(name.encode("ascii") + b" " + structure)
                elif name in ("BINARY", "BINARY.SIZE"):
                    assert item.section is not None and parsed is not None
                    job = binaryJob(parsed, record, item.section)
                    if job is None:
                        raise UnknownEncoding()
                    pieces.append((item.label, job[0], job[1], -1 if name == "BINARY" else -2, job[2], item.section.partial))
                    streamed = True
                else:
                    assert item.section is not None
                    data = resolve(parsed, record, item.section)
                    if isinstance(data, bytes):
                        skip, count = applyPartial(len(data), item.section.partial)
                        pieces.append(item.label + b" " + _literal(data[skip : skip + count]))
                    else:
                        storedStart, storedEnd, wireLength = data
                        skip, count = applyPartial(wireLength, item.section.partial)
                        pieces.append((item.label, storedStart, storedEnd, skip, count))
                        streamed = True
            if uid in flagsChanged and not wantsFlags:
                pieces.append(flagsOf(record))
            if uid in flagsChanged and session.condstore:
                # RFC 7162 §3.1: a FETCH that set \Seen reports UID and MODSEQ.
                if not any(item.name == "UID" for item in items):
                    pieces.append(b"UID %d" % (uid,))
                if not any(item.name == "MODSEQ" for item in items):
                    pieces.append(b"MODSEQ (%d)" % (record.modSeq,))
            prepared.append((uid, seq, pieces))
        if not streamed:
            # Everything is at hand (flags, dates, sizes, the index's
            # parsed headers): the responses go out in large writes.
            for _, seq, pieces in prepared:
                out.append(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(pieces)))
                outSize += len(out[-1])
                if outSize >= WRITE_CHUNK:
                    if session.view is not view or gate.stopped:
                        return None
                    session._write(b"".join(out))
                    out, outSize = [], 0
                    await gate.wait()
            continue
        for first in range(0, len(prepared), 64):
            if session.view is not view or gate.stopped:
                return None
            group = prepared[first : first + 64]
            # Files opened together, small sections read in one thread call.
            wanted = [uid for uid, _, pieces in group if any(isinstance(p, tuple) for p in pieces)]
            files: Dict[int, Any] = {}
            if wanted:
                opened = await gatherResults(
                    [folder.openMessage(uid).addErrback(lambda f: f.trap(MessageGone) and None) for uid in wanted]
                )
                files = {uid: f for uid, f in zip(wanted, opened) if f is not None}
            try:
                jobs = [
                    (files[uid], p[1], p[2], p[3], p[4])
                    for uid, _, pieces in group
                    if uid in files
                    for p in pieces
                    if isinstance(p, tuple) and len(p) == 5 and p[4] <= SMALL
                ]
                binaryJobs = [
                    (files[uid], p[1], p[2], p[4])
                    for uid, _, pieces in group
                    if uid in files
                    for p in pieces
                    if isinstance(p, tuple) and len(p) == 6
                ]
                decoded = iter(await run(_decodeParts, binaryJobs) if binaryJobs else [])
                small = iter(await run(_readSmall, jobs) if jobs else [])
                for uid, seq, pieces in group:
                    if uid in wanted and uid not in files:
                        gone = True
                        continue
                    f = files.get(uid)
                    head = b"* %d FETCH (" % (seq,)
                    sep = b""
                    for piece in pieces:
                        if isinstance(piece, bytes):
                            head += sep + piece
                            sep = b" "
                            continue
                        if len(piece) == 6:
                            label, kind, partial = piece[0], piece[3], piece[5]
                            data = next(decoded)
                            if kind == -2:
                                head += sep + label + b" %d" % (len(data),)
                            else:
                                skip, count = applyPartial(len(data), partial)
                                data = data[skip : skip + count]
                                head += sep + label + b" " + (b"~" if b"\0" in data else b"") + _literal(data)
                            sep = b" "
                            continue
                        label, storedStart, storedEnd, skip, count = piece
                        if count <= SMALL:
                            head += sep + label + b" " + _literal(next(small))
                            sep = b" "
                            continue
                        out.append(head + sep + label + b" {%d}\r\n" % (count,))
                        head, sep = b"", b""
                        session._write(b"".join(out))
                        out, outSize = [], 0
                        assert f is not None
                        reader = WireReader(f, storedStart, storedEnd, skip, count)
                        while reader.remaining > 0:
                            await gate.wait()
                            if gate.stopped:
                                return None
                            chunk = await run(reader.read, CHUNK_SIZE)
                            session._write(chunk)
                            session._activity()
                        sep = b" "
                    out.append(head + b")\r\n")
                    outSize += len(out[-1])
                    if outSize >= 64 * 1024:
                        session._write(b"".join(out))
                        out, outSize = [], 0
                        await gate.wait()
            finally:
                for f in files.values():
                    f.close()
    if out:
        session._write(b"".join(out))
    if gone:
        return "[EXPUNGEISSUED] Some messages were expunged meanwhile"
    return None


async def _fetchFlags(session: Any, view: Any, uids: List[int], names: List[str], flagsOf: Callable[[Any], bytes], gate: Any) -> Optional[str]:
    """L{runFetch} of C{UID} and C{FLAGS} only."""
    records = view.records
    shared = view.uids is records.uids and not records.extra
    messages = records.state.messages
    seqs = {u: i for i, u in enumerate(view.uids, 1)} if len(uids) > 64 else None
    if names == ["FLAGS"]:
        template = b"* %d FETCH (%s)\r\n"
    elif names[0] == "UID":
        template = b"* %d FETCH (UID %d %s)\r\n"
    else:
        template = b"* %d FETCH (%s UID %d)\r\n"
    out: List[bytes] = []
    for start in range(0, len(uids), 4096):
        if session.view is not view or gate.stopped:
            return None
        if start:
            await session.yieldToOthers()
            if session.view is not view or gate.stopped or records is not view.records:
                # The view changed meanwhile: the general way, for the rest.
                return await runFetch(session, view, uids[start:], [FetchItem(n) for n in names], gate)
        for uid in uids[start : start + 4096]:
            seq = seqs.get(uid, 0) if seqs is not None else view.seqOf(uid)
            if not seq:
                continue
            record = messages[seq - 1] if shared else records.get(uid)
            if record is None:
                continue
            if names == ["FLAGS"]:
                out.append(template % (seq, flagsOf(record)))
            elif names[0] == "UID":
                out.append(template % (seq, uid, flagsOf(record)))
            else:
                out.append(template % (seq, flagsOf(record), uid))
            if len(out) >= 1024:
                session._write(b"".join(out))
                out = []
                await gate.wait()
                if session.view is not view or gate.stopped:
                    return None
                if records is not view.records:
                    session._write(b"".join(out))
                    return await runFetch(session, view, [u for u in uids if u > uid], [FetchItem(n) for n in names], gate)
    if out:
        session._write(b"".join(out))
    return None
