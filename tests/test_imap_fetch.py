"""
Tests for L{mailnet.imap._fetch}: FETCH attribute parsing, partial
ranges and reading stored messages in wire form.
"""

import io

from twisted.trial.unittest import SynchronousTestCase

from mailnet.imap._fetch import (
    FetchItem,
    FetchSyntaxError,
    SectionSpec,
    WireReader,
    applyPartial,
    internalDate,
    parseFetchAttributes,
    parseInternalDate,
)
from mailnet.imap._parser import Atom, String


class AttributeTests(SynchronousTestCase):
    def test_macros(self) -> None:
        self.assertEqual([i.name for i in parseFetchAttributes(Atom(b"fast"))], ["FLAGS", "INTERNALDATE", "RFC822.SIZE"])
        self.assertEqual(
            [i.name for i in parseFetchAttributes(Atom(b"FULL"))], ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"]
        )

    def test_list(self) -> None:
        items = parseFetchAttributes([Atom(b"uid"), Atom(b"BODYSTRUCTURE"), Atom(b"modseq")])
        self.assertEqual([i.name for i in items], ["UID", "BODYSTRUCTURE", "MODSEQ"])

    def test_sections(self) -> None:
        [item] = parseFetchAttributes(Atom(b"BODY.PEEK[1.2.HEADER.FIELDS.NOT (From \"X-Y\")]<10.20>"))
        self.assertEqual(item.section, SectionSpec((1, 2), "HEADER.FIELDS.NOT", (b"FROM", b"X-Y"), (10, 20)))
        self.assertEqual(item.label, b"BODY[1.2.HEADER.FIELDS.NOT (From X-Y)]<10>")
        self.assertFalse(item.setsSeen)
        [item] = parseFetchAttributes(Atom(b"body[]"))
        self.assertEqual((item.section, item.label, item.setsSeen), (SectionSpec(), b"BODY[]", True))
        [item] = parseFetchAttributes(Atom(b"BODY[3.MIME]"))
        self.assertEqual(item.section, SectionSpec((3,), "MIME"))

    def test_binary(self) -> None:
        [item] = parseFetchAttributes(Atom(b"BINARY.PEEK[1.2]<0.10>"))
        self.assertEqual((item.name, item.label, item.setsSeen), ("BINARY", b"BINARY[1.2]<0>", False))
        [item] = parseFetchAttributes(Atom(b"BINARY.SIZE[3]"))
        self.assertEqual((item.name, item.label), ("BINARY.SIZE", b"BINARY.SIZE[3]"))

    def test_rfc822Forms(self) -> None:
        items = parseFetchAttributes([Atom(b"RFC822"), Atom(b"RFC822.HEADER"), Atom(b"RFC822.TEXT")])
        self.assertEqual(
            items,
            [
                FetchItem("SECTION", SectionSpec(), b"RFC822", setsSeen=True),
                FetchItem("SECTION", SectionSpec((), "HEADER"), b"RFC822.HEADER"),
                FetchItem("SECTION", SectionSpec((), "TEXT"), b"RFC822.TEXT", setsSeen=True),
            ],
        )

    def test_invalid(self) -> None:
        for token in [
            Atom(b"FROB"),
            Atom(b"BODY[FROB]"),
            Atom(b"BODY[MIME]"),
            Atom(b"BODY[]<0.0>"),
            Atom(b"BODY[HEADER.FIELDS]"),
            Atom(b"BODY[HEADER.FIELDS ()]"),
            Atom(b"BODY[HEADER (From)]"),
            Atom(b"BINARY[1.TEXT]"),
            Atom(b"BINARY.SIZE[1]<0.5>"),
            String(b"FLAGS"),
            [],
        ]:
            self.assertRaises(FetchSyntaxError, parseFetchAttributes, token)


class PartialTests(SynchronousTestCase):
    def test_applyPartial(self) -> None:
        self.assertEqual(applyPartial(100, None), (0, 100))
        self.assertEqual(applyPartial(100, (10, 20)), (10, 20))
        self.assertEqual(applyPartial(100, (90, 20)), (90, 10))
        self.assertEqual(applyPartial(100, (100, 20)), (100, 0))
        self.assertEqual(applyPartial(100, (500, 20)), (100, 0))


class WireReaderTests(SynchronousTestCase):
    stored = b"Subject: x\n\nline one\nline two\n"
    wire = stored.replace(b"\n", b"\r\n")

    def read(self, start, end, skip, count, size=7) -> bytes:
        reader = WireReader(io.BytesIO(self.stored), start, end, skip, count)
        out = []
        while reader.remaining:
            out.append(reader.read(size))
        return b"".join(out)

    def test_whole(self) -> None:
        self.assertEqual(self.read(0, None, 0, len(self.wire)), self.wire)

    def test_partialAcrossChunks(self) -> None:
        """Exactly the octets asked for, of the CRLF form, whatever the chunking."""
        for skip in range(len(self.wire)):
            for count in (1, 5, 13):
                count = min(count, len(self.wire) - skip)
                self.assertEqual(self.read(0, None, skip, count, size=3), self.wire[skip : skip + count], (skip, count))

    def test_range(self) -> None:
        body = self.stored.index(b"\n\n") + 2
        self.assertEqual(self.read(body, len(self.stored), 0, 20), b"line one\r\nline two\r\n")

    def test_shortFile(self) -> None:
        """A file shorter than the index says: the literal is still the size announced."""
        data = self.read(0, None, 0, len(self.wire) + 5)
        self.assertEqual(data, self.wire + b"     ")


class StoredCRLFTests(WireReaderTests):
    """
    Files other programs wrote with CRLF line endings (imported Maildirs),
    or with both kinds: a stored CRLF is sent as it is (not CR CR LF), as
    mime's wire offsets and the store's wire sizes count it, whatever the
    chunking (a CR at the end of one read, its LF at the start of the next).
    """

    stored = b"Subject: x\r\nX-Mixed: y\n\r\nline one\r\nline two\nbare\rCR\r\n"
    wire = b"Subject: x\r\nX-Mixed: y\r\n\r\nline one\r\nline two\r\nbare\rCR\r\n"

    def test_everyChunking(self) -> None:
        for size in range(1, 12):
            self.assertEqual(self.read(0, None, 0, len(self.wire), size=size), self.wire, size)

    def test_range(self) -> None:
        body = self.stored.index(b"\n\r\n") + 3
        self.assertEqual(self.read(body, len(self.stored), 0, 29), b"line one\r\nline two\r\nbare\rCR\r\n")

    def test_matchesParser(self) -> None:
        """The wire length mime counts is what the reader gives."""
        from mailnet import mime

        parsed = mime.parseBytes(self.stored)
        self.assertEqual(parsed.root.wireEnd - parsed.root.wireHeaderStart, len(self.wire))
        self.assertEqual(self.read(parsed.root.storedBodyStart, parsed.root.storedEnd, 0, parsed.root.wireEnd - parsed.root.wireBodyStart, size=5),
                         self.wire[self.wire.index(b"line one"):])

    def test_toWire(self) -> None:
        from mailnet.imap._fetch import toWire

        self.assertEqual(toWire(b"a\r\nb\nc"), b"a\r\nb\r\nc")
        self.assertEqual(toWire(b"\nb\n", afterCR=True), b"\nb\r\n")
        self.assertEqual(toWire(b"\nb\n", afterCR=False), b"\r\nb\r\n")

    def test_binarySection(self) -> None:
        """BINARY of a 7bit part stored with CRLF: the same rule."""
        from mailnet.imap._fetch import _decodeParts

        self.assertEqual(_decodeParts([(io.BytesIO(b"a\r\nb\n"), 0, None, "7bit")]), [b"a\r\nb\r\n"])


class NulTests(SynchronousTestCase):
    def test_nulAsSpace(self) -> None:
        """RFC 9051 §4.3: a literal holds no NUL; BODY sends it as a space."""
        reader = WireReader(io.BytesIO(b"a\0b\n"), 0, None, 0, 5)
        self.assertEqual(reader.read(), b"a b\r\n")

    def test_quotedPrintable(self) -> None:
        """RFC 2045 §6.7: trailing blanks dropped, soft breaks joined, =XX decoded."""
        from mailnet.imap._fetch import decodeQuotedPrintable

        self.assertEqual(decodeQuotedPrintable(b"h=C3=A9llo  =\nworld \t\nx=4\n"), "héllo  world\r\nx=4\r\n".encode("utf-8"))


class DateTests(SynchronousTestCase):
    def test_internalDate(self) -> None:
        self.assertEqual(internalDate(1796472000), b'" 5-Dec-2026 12:00:00 +0000"')

    def test_parse(self) -> None:
        self.assertEqual(parseInternalDate(b"05-Dec-2026 13:00:00 +0100"), 1796472000.0)
        self.assertEqual(parseInternalDate(b" 5-dec-2026 07:00:00 -0500"), 1796472000.0)
        for bad in [b"5 Dec 2026", b"05-Foo-2026 13:00:00 +0100", b""]:
            self.assertRaises(ValueError, parseInternalDate, bad)
