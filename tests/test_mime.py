# -*- test-case-name: tests.test_mime -*-
"""
Tests for L{mailnet.mime}: the streaming MIME structure parser, its bounds,
and the index cache serialisation.

The samples in C{tests/samples/imap/} are real-world-shaped messages, some
composed with Python's email package, some written by hand (broken
boundaries, missing headers, 8-bit headers, CRLF input);
C{tests/samples/imap/dovecot.json} holds what Dovecot 2.3.19 answered for
them (recorded by C{tests/samples/imap/record_dovecot.py}), which
C{tests/test_imap_render} compares with.
"""

import io
import os
import re
import time
import tracemalloc
from typing import Iterator, List

from twisted.trial.unittest import SynchronousTestCase

from mailnet import mime

SAMPLES = os.path.join(os.path.dirname(__file__), "samples", "imap")


def sample(name: str) -> bytes:
    with open(os.path.join(SAMPLES, name), "rb") as f:
        return f.read()


def sampleNames() -> List[str]:
    return sorted(n for n in os.listdir(SAMPLES) if n.endswith(".eml"))


def toWire(stored: bytes) -> bytes:
    return re.sub(rb"(?<!\r)\n", b"\r\n", stored)


def allParts(part: mime.Part) -> Iterator[mime.Part]:
    yield part
    for child in part.parts:
        yield from allParts(child)
    if part.message is not None:
        yield from allParts(part.message.root)


def shape(part: mime.Part) -> tuple:
    """The structure without offsets."""
    return (
        part.type,
        part.subtype,
        part.params,
        part.encoding,
        part.disposition,
        part.lines,
        part.wireEnd - part.wireBodyStart,
        tuple(shape(p) for p in part.parts),
        None if part.message is None else (part.message.envelope, shape(part.message.root)),
    )


class StructureTests(SynchronousTestCase):
    def test_simple(self) -> None:
        """
        A message without MIME headers is one text/plain; charset=us-ascii
        part; the header is kept in wire form, the envelope fields raw and
        unfolded.
        """
        data = sample("simple.eml")
        parsed = mime.parseBytes(data)
        root = parsed.root
        self.assertEqual((root.type, root.subtype, root.params), ("text", "plain", (("charset", "us-ascii"),)))
        self.assertEqual(parsed.header, toWire(data[: data.index(b"\n\n") + 2]))
        self.assertTrue(parsed.headerComplete())
        self.assertEqual(parsed.envelope.subject, b"Hello there")
        self.assertEqual(parsed.envelope.messageId, b"<1@example.test>")
        self.assertIsNone(parsed.envelope.cc)
        self.assertEqual(root.storedBodyStart, data.index(b"\n\n") + 2)
        self.assertEqual(root.storedEnd, len(data))
        self.assertEqual(root.wireEnd, len(toWire(data)))
        self.assertEqual(root.lines, 2)

    def test_wireOffsets(self) -> None:
        """
        For every part of every sample, the stored range turned into CRLF
        form is exactly the wire range.
        """
        for name in sampleNames():
            stored = sample(name)
            wire = toWire(stored)
            for part in allParts(mime.parseBytes(stored).root):
                self.assertEqual(
                    toWire(stored[part.storedHeaderStart:part.storedEnd]), wire[part.wireHeaderStart:part.wireEnd], name
                )
                self.assertEqual(toWire(stored[part.storedBodyStart:part.storedEnd]), wire[part.wireBodyStart:part.wireEnd], name)

    def test_crlfInput(self) -> None:
        """
        A file with CRLF line endings gives the same structure and wire
        offsets as the same message with LF ones.
        """
        for name in sampleNames():
            stored = sample(name)
            lf = mime.parseBytes(stored.replace(b"\r\n", b"\n"))
            crlf = mime.parseBytes(toWire(stored))
            self.assertEqual(shape(lf.root), shape(crlf.root), name)
            self.assertEqual(lf.header, crlf.header, name)
            self.assertEqual([p.wireBodyStart for p in allParts(lf.root)], [p.wireBodyStart for p in allParts(crlf.root)])

    def test_nested(self) -> None:
        """
        Nested multiparts, message/rfc822 with its own envelope and
        multipart, multipart/digest whose parts default to message/rfc822,
        preamble and epilogue outside every part.
        """
        data = sample("nested.eml")
        root = mime.parseBytes(data).root
        self.assertEqual((root.type, root.subtype), ("multipart", "mixed"))
        alternative, message, digest = root.parts
        self.assertEqual([p.subtype for p in alternative.parts], ["plain", "html"])
        self.assertEqual(data[alternative.parts[0].storedBodyStart:alternative.parts[0].storedEnd], b"plain")
        html = alternative.parts[1]
        self.assertEqual((html.id, html.description, html.language, html.location), ("<id1@x>", "the html", ("en", "fr"), "http://example.test/x"))
        self.assertEqual(message.disposition, ("inline", ()))
        assert message.message is not None
        self.assertEqual(message.message.envelope.subject, b"the inner one")
        self.assertEqual(message.message.root.subtype, "mixed")
        # RFC 2231 continuations joined, as Dovecot does.
        self.assertEqual(message.message.root.parts[0].params, (("name", "longname.txt"), ("charset", "us-ascii")))
        entry = digest.parts[0]
        self.assertEqual((entry.type, entry.subtype), ("message", "rfc822"))
        assert entry.message is not None
        self.assertEqual(entry.message.envelope.subject, b"digest entry")
        self.assertEqual(data[root.storedBodyStart:root.storedEnd], data[data.index(b"\n\n") + 2:])

    def test_boundaryLines(self) -> None:
        """
        A boundary line may carry trailing white space; a line that only
        starts with the boundary is not one (RFC 2046 §5.1.1; Dovecot takes
        it for one); a missing final boundary ends the part at the end.
        """
        data = sample("malformed-multipart.eml")
        root = mime.parseBytes(data).root
        self.assertEqual([(p.type, p.subtype) for p in root.parts], [("text", "plain"), ("text", "html"), ("application", "octet-stream")])
        first, html, attachment = root.parts
        self.assertEqual(data[first.storedBodyStart:first.storedEnd], b"first part\n--XyZ-not-a-boundary\nstill first")
        self.assertEqual(first.params, (("charset", "UTF-8"), ("format", "Flowed")))
        self.assertEqual(html.params, (("charset", "ISO-8859-1"),))
        self.assertEqual(html.encoding, "Quoted-Printable")
        self.assertEqual(data[attachment.storedBodyStart:attachment.storedEnd], b"no final boundary")
        self.assertEqual(attachment.disposition, ("attachment", (("filename", "a.bin"),)))
        self.assertEqual(root.storedEnd, len(data))

    def test_boundaryAtBodyStart(self) -> None:
        """
        A boundary line right after the header (no preamble, so no line
        ending before it) and an empty part.
        """
        data = b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\n--b\n\nx\n--b--\n"
        root = mime.parseBytes(data).root
        self.assertEqual(len(root.parts), 2)
        self.assertEqual(root.parts[0].storedBodyStart, root.parts[0].storedEnd)
        self.assertEqual(data[root.parts[1].storedBodyStart:root.parts[1].storedEnd], b"x")

    def test_emptyMultipart(self) -> None:
        """
        A multipart whose boundary never appears has no parts (rendered as
        one empty text part, as Dovecot does).
        """
        root = mime.parseBytes(sample("empty-multipart.eml")).root
        self.assertEqual((root.type, root.parts), ("multipart", ()))

    def test_multipartWithoutBoundary(self) -> None:
        """
        A multipart without a boundary parameter has no parts (as in
        Dovecot: shown with one empty text part).
        """
        data = b"Content-Type: multipart/mixed\n\n--x\n\nbody\n"
        root = mime.parseBytes(data).root
        self.assertEqual((root.type, root.subtype, root.parts, root.storedEnd), ("multipart", "mixed", (), len(data)))

    def test_headerOnly(self) -> None:
        """
        A message with no empty line after the header has an empty body.
        """
        data = sample("header-only.eml")
        parsed = mime.parseBytes(data)
        self.assertEqual(parsed.root.storedBodyStart, len(data))
        self.assertEqual(parsed.root.lines, 0)
        self.assertEqual(parsed.envelope.subject, b"no body at all")
        self.assertTrue(parsed.headerComplete())

    def test_empty(self) -> None:
        """
        An empty file is an empty text/plain message.
        """
        parsed = mime.parseBytes(b"")
        self.assertEqual((parsed.header, parsed.root.wireEnd, parsed.root.type), (b"", 0, "text"))

    def test_lines(self) -> None:
        """
        The line count is the number of line endings in the body, the one
        before a boundary not included (as Dovecot counts).
        """
        self.assertEqual(mime.parseBytes(b"S: x\n\na\nb").root.lines, 1)
        self.assertEqual(mime.parseBytes(b"S: x\n\na\nb\n").root.lines, 2)
        root = mime.parseBytes(b"Content-Type: multipart/mixed; boundary=q\n\n--q\n\none\n--q\n\none\ntwo\n\n--q--\n").root
        self.assertEqual([p.lines for p in root.parts], [0, 2])

    def test_eightBitHeaders(self) -> None:
        """
        8-bit octets in header fields are kept as they are.
        """
        data = sample("eightbit.eml")
        parsed = mime.parseBytes(data)
        self.assertEqual(parsed.envelope.from_, b'"Ren\xc3\xa9" <rene@example.test>')
        self.assertIn(b"\xe2\x82\xac", parsed.envelope.subject or b"")
        params = mime.parseBytes(b'Content-Type: text/plain; name="\xff\xfe.txt"\n\nx').root.params
        self.assertEqual(params[0][1].encode("utf-8", "surrogateescape"), b"\xff\xfe.txt")

    def test_tolerantHeaders(self) -> None:
        """
        Folded fields, white space before the colon (obsolete syntax),
        comments in Content-Type, lines that are not fields.
        """
        data = (
            b"Subject : folded\n\tsubject\nnot a field\nContent-Type: (comment) text/plain (c); charset = \"utf-8\" ;\n"
            b" format=flowed\nContent-Transfer-Encoding: base64\n\naGk=\n"
        )
        parsed = mime.parseBytes(data)
        # (A tab after a line break becomes a space, as in Dovecot.)
        self.assertEqual(parsed.envelope.subject, b"folded subject")
        self.assertEqual(parsed.root.params, (("charset", "utf-8"), ("format", "flowed")))
        self.assertEqual(parsed.root.encoding, "base64")

    def test_rfc2231(self) -> None:
        """
        RFC 2231 continuations are joined as Dovecot joins them: plain ones
        into the name, extended ones (still encoded) into C{name*}; a
        single extended value is left alone.
        """
        root = mime.parseBytes(sample("signed-related.eml")).root
        image = root.parts[0].parts[1]
        self.assertEqual(image.disposition, ("inline", (("filename*", "utf-8''%E2%82%AC%20logo.png"),)))
        root = mime.parseBytes(b"Content-Type: text/plain; a*1=\"2\"; b=x; a*0=1; c*=us-ascii''z\n\n").root
        self.assertEqual(root.params, (("a", "12"), ("b", "x"), ("c*", "us-ascii''z"), ("charset", "us-ascii")))

    def test_repeatedAddressFields(self) -> None:
        """
        Address fields given more than once make one list; other fields
        are taken from their first occurrence.
        """
        parsed = mime.parseBytes(b"To: a@x\nCc: c@x\nSubject: one\nCC: d@x\ncc:\ncc: e@x\nSubject: two\n\n")
        self.assertEqual(parsed.envelope.cc, b"c@x, d@x, e@x")
        self.assertEqual(parsed.envelope.to, b"a@x")
        self.assertEqual(parsed.envelope.subject, b"one")

    def test_invalidContentType(self) -> None:
        """
        An invalid Content-Type is the default, text/plain; us-ascii.
        """
        root = mime.parseBytes(b"Content-Type: garbage\n\nx").root
        self.assertEqual((root.type, root.subtype, root.params), ("text", "plain", (("charset", "us-ascii"),)))

    def test_encodedMessageIsOpaque(self) -> None:
        """
        A base64-encoded message/rfc822 is not parsed as a message.
        """
        root = mime.parseBytes(b"Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\nU3ViamVjdDogeAoK\n").root
        self.assertEqual((root.type, root.subtype, root.message), ("message", "rfc822", None))

    def test_messageGlobal(self) -> None:
        """
        message/global is parsed as a message, as message/rfc822.
        """
        root = mime.parseBytes(b"Content-Type: message/global\n\nSubject: inner\n\nbody\n").root
        assert root.message is not None
        self.assertEqual(root.message.envelope.subject, b"inner")


class BoundsTests(SynchronousTestCase):
    def test_deepNesting(self) -> None:
        """
        10,000 nested multiparts: parsed down to MAX_DEPTH, below which a
        part is opaque; no exception, no recursion error.
        """
        depth = 10000
        head = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(depth))
        tail = b"".join(b"\n--b%d--\n" % i for i in reversed(range(depth)))
        data = b"Subject: deep\n" + head + b"\ninnermost" + tail
        started = time.perf_counter()
        parsed = mime.parseBytes(data)
        self.assertLess(time.perf_counter() - started, 10)
        levels = 0
        part = parsed.root
        while part.parts:
            self.assertEqual(len(part.parts), 1)
            part = part.parts[0]
            levels += 1
        self.assertEqual(levels, mime.MAX_DEPTH)
        self.assertEqual((part.type, part.subtype), ("application", "octet-stream"))
        self.assertEqual(parsed.root.storedEnd, len(data))
        self.assertEqual(mime.ParsedMessage.fromBytes(parsed.toBytes()).root, parsed.root)

    def test_deepMessages(self) -> None:
        """
        Deeply nested message/rfc822 parts stop at MAX_DEPTH too.
        """
        data = b"Content-Type: message/rfc822\n\n" * 5000 + b"Subject: x\n\nbody\n"
        part = mime.parseBytes(data).root
        levels = 0
        while part.message is not None:
            part = part.message.root
            levels += 1
        self.assertEqual(levels, mime.MAX_DEPTH)

    def test_manyParts(self) -> None:
        """
        100,000 parts: after MAX_PARTS, boundaries are no longer looked
        for and the rest belongs to the last part.
        """
        count = 100000
        data = b"Content-Type: multipart/mixed; boundary=p\n\n" + b"--p\n\nx\n" * count + b"--p--\n"
        started = time.perf_counter()
        root = mime.parseBytes(data).root
        self.assertLess(time.perf_counter() - started, 10)
        self.assertEqual(len(root.parts), mime.MAX_PARTS - 1)
        self.assertEqual(root.parts[-1].storedEnd, len(data))
        self.assertEqual(root.storedEnd, len(data))

    def test_hugeHeader(self) -> None:
        """
        Only MAX_HEADER octets of a header are kept; the rest is read past.
        """
        data = b"Subject: big\n" + b"X-Filler: " + b"y" * 100 + b"\n" * 0 + b"\n".join(b"X-F: %d" % i for i in range(100000)) + b"\n\nbody\n"
        parsed = mime.parseBytes(data)
        self.assertEqual(len(parsed.header), mime.MAX_HEADER)
        self.assertFalse(parsed.headerComplete())
        self.assertEqual(parsed.envelope.subject, b"big")
        self.assertEqual(data[parsed.root.storedBodyStart:], b"body\n")

    def test_enclosedHeadersBudget(self) -> None:
        """
        The headers kept for enclosed messages share one budget; past it
        they are empty (and FETCH reads them from the file).
        """
        inner = b"Content-Type: message/rfc822\n\nSubject: inner\nX-Pad: " + b"p" * 200000 + b"\n\nbody\n"
        data = b"Content-Type: multipart/mixed; boundary=b\n\n" + b"".join(b"--b\n" + inner for _ in range(8)) + b"--b--\n"
        parts = mime.parseBytes(data).root.parts
        kept = [p.message.header for p in parts if p.message is not None]
        self.assertEqual(len(kept), 8)
        self.assertEqual(sum(1 for h in kept if h), mime.MAX_ENCLOSED_HEADERS // 200000)
        self.assertLessEqual(sum(map(len, kept)), mime.MAX_ENCLOSED_HEADERS)
        self.assertTrue(all(p.message is not None and p.message.envelope.subject == b"inner" for p in parts))
        last = parts[-1].message
        assert last is not None
        self.assertFalse(last.headerComplete())

    def test_longLines(self) -> None:
        """
        A line longer than a read chunk (no LF for 1 MB) is handled in
        pieces, in the header and in the body, and a boundary line after
        it is still found.
        """
        data = (
            b"Content-Type: multipart/mixed; boundary=L\nX-Long: " + b"h" * 300000 + b"\n\n--L\n\n" + b"a" * 1000000 + b"\n--L--\n"
        )
        root = mime.parseBytes(data).root
        self.assertEqual(root.parts[0].storedEnd - root.parts[0].storedBodyStart, 1000000)

    def test_bigMessageStreamed(self) -> None:
        """
        A 20 MiB message is read in chunks of CHUNK_SIZE and never held
        whole: the parse allocates well under 2 MB.
        """
        line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\n"
        body = line * (20 * 1024 * 1024 // len(line))
        path = self.mktemp()
        head = b"Content-Type: multipart/mixed; boundary=zz\n\n--zz\n\nhi\n--zz\nContent-Transfer-Encoding: base64\n\n"
        with open(path, "wb") as f:
            f.write(head)
            f.write(body)
            f.write(b"--zz--\n")
        lineCount = len(body) // len(line)
        del body
        reads = []

        class Recording(io.FileIO):
            def read(self, size: int = -1) -> bytes:  # type: ignore[override]
                reads.append(size)
                return super().read(size)

        tracemalloc.start()
        try:
            with Recording(path, "rb") as f:
                parsed = mime.parseMessage(f)  # type: ignore[arg-type]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 2 * 1024 * 1024)
        self.assertEqual(set(reads), {mime.CHUNK_SIZE})
        # The line ending before the closing boundary belongs to it.
        self.assertEqual(parsed.root.parts[1].lines, lineCount - 1)
        self.assertEqual(parsed.root.wireEnd, os.path.getsize(path) + head.count(b"\n") + lineCount + 1)


class SerialisationTests(SynchronousTestCase):
    def test_roundTrip(self) -> None:
        """
        fromBytes(toBytes()) gives back an equal message, for every sample.
        """
        for name in sampleNames():
            parsed = mime.parseBytes(sample(name))
            data = parsed.toBytes()
            self.assertIsInstance(data, bytes)
            loaded = mime.ParsedMessage.fromBytes(data)
            self.assertEqual(loaded, parsed, name)
            self.assertEqual(loaded.root, parsed.root, name)
            self.assertEqual(mime.ParsedMessage.fromBytes(loaded.toBytes()), parsed)

    def test_eightBitRoundTrip(self) -> None:
        """
        8-bit octets in parameters and fields survive the round trip.
        """
        parsed = mime.parseBytes(b'Content-Type: text/plain; name="\xff\xfe.txt"\nContent-Description: \xe9t\xe9\n\nx')
        loaded = mime.ParsedMessage.fromBytes(parsed.toBytes())
        self.assertEqual(loaded.root.params[0][1].encode("utf-8", "surrogateescape"), b"\xff\xfe.txt")
        self.assertEqual(loaded, parsed)

    def test_compact(self) -> None:
        """
        The serialised form of a typical message is much smaller than the
        message.
        """
        data = sample("composed.eml")
        self.assertLess(len(mime.parseBytes(data).toBytes()), len(data) / 3)

    def test_notOurs(self) -> None:
        """
        fromBytes of something else raises ValueError (the index then
        parses the message again).
        """
        good = mime.parseBytes(sample("simple.eml")).toBytes()
        for bad in [b"", b"{}", b"\x00\x04garbage", good[:2] + b"\xff\xff", good[:-5]]:
            self.assertRaises(ValueError, lambda data=bad: mime.ParsedMessage.fromBytes(data).root)

    def test_fast(self) -> None:
        """
        10,000 loads take well under a second (about 25 ms here: the root
        part is unpacked when first used).
        """
        data = mime.parseBytes(sample("composed.eml")).toBytes()
        started = time.perf_counter()
        for _ in range(10000):
            mime.ParsedMessage.fromBytes(data)
        self.assertLess(time.perf_counter() - started, 1.0)
