# -*- test-case-name: tests.test_imap_render -*-
"""
Tests for L{mailnet.imap._render}: ENVELOPE, BODYSTRUCTURE, sections and
partial ranges, compared with what Dovecot answers for the same messages
(C{tests/samples/imap/dovecot.json}, recorded by
C{tests/samples/imap/record_dovecot.py} from a private Dovecot 2.3.19 instance).
"""

import json
import os
import re
from typing import List, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase

from mailnet import mime
from mailnet.imap import _render
from mailnet.imap._render import Range, Section, SectionError

from .test_mime import SAMPLES, sample, toWire

# Where we answer differently from Dovecot, on purpose:
#  - malformed-multipart.eml: Dovecot takes "--XyZ-not-a-boundary" for a
#    boundary line (it matches boundaries by prefix); RFC 2046 §5.1.1 and
#    Python's email package do not.
#  - Dovecot keeps the case of media types and parameter names as written
#    ("TEXT" "HTML" ("Charset" ...)); we send them lower case.
#  - header-only.eml HEADER.FIELDS.NOT: Dovecot leaves out the empty line
#    when the message has none and no field is left; RFC 9051 §6.4.5 says
#    the subset ends with it, which is what we send.
DIFFERENT = {("malformed-multipart.eml", "BODYSTRUCTURE"), ("malformed-multipart.eml", "BODY"), ("header-only.eml", "BODY[HEADER.FIELDS.NOT (SUBJECT from)]")}
DIFFERENT_SECTIONS = {"malformed-multipart.eml"}
# Compared ignoring case, for the second reason above.
CASE_DIFFERS = {("signed-related.eml", "BODYSTRUCTURE"), ("signed-related.eml", "BODY")}


def canonical(data: bytes) -> bytes:
    """
    An IMAP response item with each string (quoted or literal) in one
    form, so that the choice between the two does not matter.
    """
    out = bytearray()
    i = 0
    while i < len(data):
        m = re.compile(rb"\{(\d+)\}\r\n").match(data, i)
        if m:
            n = int(m.group(1))
            value = data[m.end():m.end() + n]
            i = m.end() + n
        elif data[i:i + 1] == b'"':
            value, i = mime._quoted(data, i)
        else:
            out += data[i:i + 1]
            i += 1
            continue
        out += b"<" + value.replace(b"\\", b"\\\\").replace(b">", b"\\>") + b">"
    return bytes(out)


def parseItem(text: str) -> bytes:
    return text.encode("latin-1")


def sectionBytes(stored: bytes, data: _render.SectionData, partial: Optional[Tuple[int, int]]) -> bytes:
    if isinstance(data, Range):
        wire = toWire(stored[data.storedStart:data.storedEnd])
        assert len(wire) == data.wireLength, (len(wire), data)
    else:
        wire = data
    skip, count = _render.applyPartial(len(wire), partial)
    return wire[skip:skip + count]


def fetchSection(name: str, item: str) -> Tuple[bytes, bytes]:
    """Our label and literal for a recorded FETCH item such as C{BODY[1]<2.5>}."""
    m = re.match(r"BODY\[(.*)\](?:<(\d+)\.(\d+)>)?$", item)
    assert m is not None
    partial = (int(m.group(2)), int(m.group(3))) if m.group(2) else None
    section = Section.fromSpec(m.group(1).encode(), partial)
    stored = sample(name)
    value = sectionBytes(stored, _render.resolveSection(mime.parseBytes(stored), section), partial)
    return _render.sectionLabel(section), b"{%d}\r\n%s" % (len(value), value)


class DovecotOracleTests(SynchronousTestCase):
    def setUp(self) -> None:
        with open(os.path.join(SAMPLES, "dovecot.json")) as f:
            self.recorded = json.load(f)

    def test_structure(self) -> None:
        """
        BODYSTRUCTURE, BODY, ENVELOPE and RFC822.SIZE are what Dovecot
        sends, strings aside (quoted or literal).
        """
        compared = 0
        for name, items in sorted(self.recorded.items()):
            parsed = mime.parseBytes(sample(name))
            ours = {
                "BODYSTRUCTURE": _render.bodyStructure(parsed.root, True),
                "BODY": _render.bodyStructure(parsed.root, False),
                "ENVELOPE": _render.envelope(parsed.envelope),
                "RFC822.SIZE": b"%d" % (parsed.root.wireEnd,),
            }
            for item, value in ours.items():
                if (name, item) in DIFFERENT:
                    continue
                ours, theirs = canonical(value), canonical(parseItem(items[item][1]))
                if (name, item) in CASE_DIFFERS:
                    ours, theirs = ours.lower(), theirs.lower()
                self.assertEqual(ours, theirs, (name, item))
                compared += 1
        self.assertGreater(compared, 40)

    def test_sections(self) -> None:
        """
        Every recorded BODY[section]<partial> gives the same octets and
        label as Dovecot's.
        """
        compared = 0
        for name, items in sorted(self.recorded.items()):
            if name in DIFFERENT_SECTIONS:
                continue
            for item, (label, value) in items.items():
                if not item.startswith("BODY[") or (name, item) in DIFFERENT:
                    continue
                ourLabel, ourValue = fetchSection(name, item)
                theirs = parseItem(value)
                if item.startswith("BODY[HEADER.FIELDS"):
                    # Recorded as label "(FIELDS)] {n}..." split at the space.
                    theirLabel, theirs = (label + " " + value).encode("latin-1").split(b"] ", 1)
                    self.assertEqual(ourLabel, theirLabel + b"]", (name, item))
                elif item == "BODY[]":
                    theirs = theirs.split(b"BODY[] ", 1)[1]
                else:
                    self.assertEqual(ourLabel, label.encode(), (name, item))
                self.assertEqual(ourValue, theirs, (name, item))
                compared += 1
        self.assertGreater(compared, 150)

    def test_malformedStructure(self) -> None:
        """
        The message Dovecot sees differently: three parts, the line that
        only starts like a boundary inside the first.
        """
        parsed = mime.parseBytes(sample("malformed-multipart.eml"))
        self.assertEqual(
            _render.bodyStructure(parsed.root, False),
            b'(("text" "plain" ("charset" "UTF-8" "format" "Flowed") NIL NIL "7bit" 45 2)'
            b'("text" "html" ("charset" "ISO-8859-1") NIL NIL "Quoted-Printable" 15 1)'
            b'("application" "octet-stream" NIL NIL NIL "7bit" 17) "mixed")',
        )


class MessagePartTests(SynchronousTestCase):
    """
    message/rfc822 parts that are not parsed as messages, and
    message/global, compared with what Dovecot 2.3 sends for them.
    """

    def structure(self, data: bytes, rev2: bool = False) -> bytes:
        return _render.bodyStructure(mime.parseBytes(data).root, True, rev2)

    def test_encodedMessage(self) -> None:
        """
        A base64 message/rfc822 is shown as an empty message (the grammar
        needs an envelope and a body).  Dovecot parses the encoded text as
        a header and counts the line ending before the boundary (22 1); we
        do not (20 0).
        """
        data = b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\nU3ViamVjdDogeAoKaGkK\n--b--\n"
        self.assertEqual(
            self.structure(data),
            b'(("message" "rfc822" NIL NIL NIL "base64" 20 (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL) '
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL) 0 NIL NIL NIL NIL) "mixed" ("boundary" "b") NIL NIL NIL)',
        )

    def test_messageWithoutBody(self) -> None:
        """
        A message/rfc822 part whose header runs into the boundary is an
        empty message, as in Dovecot.
        """
        data = b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: message/rfc822\n--b--\n"
        self.assertEqual(
            self.structure(data),
            b'(("message" "rfc822" NIL NIL NIL "7bit" 0 (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL) '
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL) 0 NIL NIL NIL NIL) "mixed" ("boundary" "b") NIL NIL NIL)',
        )

    def test_messageGlobal(self) -> None:
        """
        message/global is a basic part for IMAP4rev1 clients (as Dovecot
        2.3 sends it), a message with its envelope for IMAP4rev2 ones
        (RFC 9051's grammar).
        """
        data = b"Content-Type: message/global\n\nSubject: g\n\nbody\n"
        self.assertEqual(self.structure(data), b'("message" "global" NIL NIL NIL "7bit" 20 NIL NIL NIL NIL)')
        self.assertEqual(
            self.structure(data, rev2=True),
            b'("message" "global" NIL NIL NIL "7bit" 20 (NIL "g" NIL NIL NIL NIL NIL NIL NIL NIL) '
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 1 NIL NIL NIL NIL) 3 NIL NIL NIL NIL)',
        )

    def test_language(self) -> None:
        """
        Content-Language is always a list, as Dovecot sends it.
        """
        data = b"Content-Type: text/plain; charset=utf-8\nContent-Language: en\nContent-Disposition: ATTACHMENT; FILENAME=x\n\nbody\n"
        self.assertEqual(self.structure(data), b'("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 6 1 NIL ("ATTACHMENT" ("filename" "x")) ("en") NIL)')


class StringTests(SynchronousTestCase):
    def test_quoted(self) -> None:
        """
        Plain text is quoted.
        """
        self.assertEqual(_render.quoteString(b"Hello world"), b'"Hello world"')
        self.assertEqual(_render.quoteString("caf"), b'"caf"')
        self.assertEqual(_render.quoteString(b""), b'""')

    def test_literal(self) -> None:
        """
        CR, LF, 8-bit octets, quotes and backslashes make a literal; NUL
        becomes a space.
        """
        for value in [b"a\r\nb", b"a\nb", "café".encode(), b'say "hi"', b"back\\slash"]:
            self.assertEqual(_render.quoteString(value), b"{%d}\r\n%s" % (len(value), value))
        self.assertEqual(_render.quoteString(b"a\x00b"), b'"a b"')
        self.assertEqual(_render.quoteString(b"\x00\xff"), b"{2}\r\n \xff")

    def test_nstring(self) -> None:
        """
        None is NIL.
        """
        self.assertEqual(_render.nstring(None), b"NIL")
        self.assertEqual(_render.nstring(b"x"), b'"x"')


class AddressTests(SynchronousTestCase):
    def render(self, value: bytes) -> bytes:
        return _render.addressList(value)

    def test_simple(self) -> None:
        """
        Display names, angle addresses, bare addresses.
        """
        self.assertEqual(
            self.render(b'Alice <a@x.test>, b@y.test, "Smith, J." <j@z.test>'),
            b'(("Alice" NIL "a" "x.test")(NIL NIL "b" "y.test")("Smith, J." NIL "j" "z.test"))',
        )

    def test_fastPathAgrees(self) -> None:
        """
        The common forms, rendered without the full parser, come out as the
        full parser renders them; phrases keep their words' spacing.
        """
        for value in [b"User 5 <user5@example.test>", b"John Q. Public <x@y.z>", b"Foo.Bar <x@y>", b"a@b.c, Foo Bar <x@y.z>",
                      b"  Foo   Bar  <x@y.z> ", b"<a@b.c>", b"Name <a@b>, <c@d>", b"=?utf-8?q?J=C3=B6rg?= Smith <j@x>", b"john.doe@x.test"]:
            fast = _render._simpleAddressList(value)
            self.assertIsNotNone(fast, value)
            self.assertEqual(fast, b"(" + b"".join(_render._renderAddress(a) for a in _render.parseAddresses(value)) + b")", value)
        self.assertEqual(self.render(b"John Q. Public <x@y.z>"), b'(("John Q. Public" NIL "x" "y.z"))')
        for value in [b'"Q" <a@b>', b"a (c) <a@b>", b"G: a@b;", b"a . b@c", b"caf\xc3\xa9 <a@b>", b"a@b,", b"x <a@b> y"]:
            self.assertIsNone(_render._simpleAddressList(value), value)

    def test_encodedWordsKept(self) -> None:
        """
        RFC 2047 encoded words are sent as they are.
        """
        self.assertEqual(self.render(b"=?utf-8?q?J=C3=B6rg?= <j@x.test>"), b'(("=?utf-8?q?J=C3=B6rg?=" NIL "j" "x.test"))')

    def test_groups(self) -> None:
        """
        A group is framed by (NIL NIL name NIL) and (NIL NIL NIL NIL).
        """
        self.assertEqual(
            self.render(b"Team: a@x.test, B <b@x.test>;, undisclosed-recipients:;"),
            b'((NIL NIL "Team" NIL)(NIL NIL "a" "x.test")("B" NIL "b" "x.test")(NIL NIL NIL NIL)'
            b'(NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))',
        )

    def test_empty(self) -> None:
        """
        An empty or absent field is NIL.
        """
        self.assertEqual(self.render(b""), b"NIL")
        self.assertEqual(_render.addressList(None), b"NIL")

    def test_broken(self) -> None:
        """
        Missing parts are filled in as Dovecot does; junk does not raise.
        """
        self.assertEqual(self.render(b"local"), b'((NIL NIL "local" "MISSING_DOMAIN"))')
        self.assertEqual(self.render(b"<@x.test>"), b'((NIL "@x.test" "MISSING_MAILBOX" "MISSING_DOMAIN"))')
        for junk in [b"<<<>>>", b'"unterminated', b"(((", b"a@", b"@", b":;:;", b"\xff\xfe@\x00", b"<a@b" * 1000]:
            self.assertIsInstance(self.render(junk), bytes)

    def test_commentName(self) -> None:
        """
        The obsolete C{addr (Name)} form: the comment is not a name when
        there is none (Dovecot sends NIL too).
        """
        self.assertEqual(self.render(b"Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>"), b'(("Pete" NIL "pete" "silly.test"))')

    def test_envelopeDefaults(self) -> None:
        """
        Sender and Reply-To are From when absent or empty.
        """
        env = mime.Envelope(from_=b"a@x.test", sender=b"", subject=b"s")
        self.assertEqual(
            _render.envelope(env),
            b'(NIL "s" ((NIL NIL "a" "x.test")) ((NIL NIL "a" "x.test")) ((NIL NIL "a" "x.test")) NIL NIL NIL NIL NIL)',
        )


class SectionSpecTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """
        Section specifications as clients send them.
        """
        self.assertEqual(Section.fromSpec(b""), Section())
        self.assertEqual(Section.fromSpec(b"1.2"), Section((1, 2)))
        self.assertEqual(Section.fromSpec(b"header"), Section((), "HEADER"))
        self.assertEqual(Section.fromSpec(b"3.TEXT", (0, 10)), Section((3,), "TEXT", (), (0, 10)))
        self.assertEqual(Section.fromSpec(b"2.mime"), Section((2,), "MIME"))
        self.assertEqual(
            Section.fromSpec(b'1.HEADER.FIELDS (From "To" x-Spam)'), Section((1,), "HEADER.FIELDS", (b"FROM", b"TO", b"X-SPAM"))
        )
        self.assertEqual(Section.fromSpec(b"HEADER.FIELDS.NOT (Subject)"), Section((), "HEADER.FIELDS.NOT", (b"SUBJECT",)))

    def test_invalid(self) -> None:
        """
        Invalid specifications raise SectionError.
        """
        for spec in [b"MIME", b"0", b"1.", b"1..2", b"BOGUS", b"HEADER.FIELDS", b"HEADER.FIELDS ()", b"HEADER (From)",
                     b"HEADER.FIELDS (From", b"HEADER.FIELDS (a:b)", b"1." * 200 + b"1", b"99999999999"]:
            self.assertRaises(SectionError, Section.fromSpec, spec)

    def test_label(self) -> None:
        """
        The label names the section as FETCH responses do, the partial by
        its origin only.
        """
        self.assertEqual(_render.sectionLabel(Section()), b"BODY[]")
        self.assertEqual(_render.sectionLabel(Section((1, 2), "MIME")), b"BODY[1.2.MIME]")
        self.assertEqual(_render.sectionLabel(Section((), "HEADER.FIELDS", (b"FROM", b"TO"), (5, 10))), b"BODY[HEADER.FIELDS (FROM TO)]<5>")

    def test_partial(self) -> None:
        """
        applyPartial gives exactly the octets asked for, nothing beyond the
        end.
        """
        self.assertEqual(_render.applyPartial(100, None), (0, 100))
        self.assertEqual(_render.applyPartial(100, (10, 20)), (10, 20))
        self.assertEqual(_render.applyPartial(100, (90, 20)), (90, 10))
        self.assertEqual(_render.applyPartial(100, (100, 20)), (100, 0))
        self.assertEqual(_render.applyPartial(100, (500, 20)), (100, 0))
        self.assertEqual(_render.applyPartial(100, (0, 0)), (0, 0))


class SectionTests(SynchronousTestCase):
    def resolve(self, data: bytes, spec: bytes) -> bytes:
        return sectionBytes(data, _render.resolveSection(mime.parseBytes(data), Section.fromSpec(spec)), None)

    def test_headerFieldsKeepsLines(self) -> None:
        """
        HEADER.FIELDS matches names case-insensitively, keeps the lines as
        they are (folding included) and ends with the empty line.
        """
        data = b"SUBJECT: one\n two\nFrom: a@x\nsubject: again\nX-Other: y\n\nbody\n"
        self.assertEqual(self.resolve(data, b"HEADER.FIELDS (Subject)"), b"SUBJECT: one\r\n two\r\nsubject: again\r\n\r\n")
        self.assertEqual(self.resolve(data, b"HEADER.FIELDS.NOT (subject from)"), b"X-Other: y\r\n\r\n")
        self.assertEqual(self.resolve(data, b"HEADER.FIELDS (Nothing)"), b"\r\n")

    def test_headerFieldsNotKeepsBrokenLines(self) -> None:
        """
        Header lines that are not fields are kept by HEADER.FIELDS.NOT
        (as Dovecot does), never by HEADER.FIELDS.
        """
        data = b"Send submissions to\n\tlist@x\nTo: a@x\n\nbody\n"
        self.assertEqual(self.resolve(data, b"HEADER.FIELDS.NOT (TO)"), b"Send submissions to\r\n\tlist@x\r\n\r\n")
        self.assertEqual(self.resolve(data, b"HEADER.FIELDS (TO SEND)"), b"To: a@x\r\n\r\n")

    def test_emptyLineBeforeBoundary(self) -> None:
        """
        When a part's header is followed by an empty line and at once by
        the boundary, that line's ending belongs to the boundary: the part
        is its header lines, without the empty line (RFC 2046 §5.1.1; as
        Dovecot sees it).  With a line between, the empty line ends the
        header.
        """
        data = b"Content-Type: multipart/mixed; boundary=foo\n\n--foo\nContent-Type: text/plain\nbar\n\n--foo\n\n\n\n--foo--\n"
        self.assertEqual(self.resolve(data, b"1.MIME"), b"Content-Type: text/plain\r\nbar\r\n")
        self.assertEqual(self.resolve(data, b"1"), b"")
        self.assertEqual(self.resolve(data, b"2.MIME"), b"\r\n")
        self.assertEqual(self.resolve(data, b"2"), b"\r\n")

    def test_nonMultipart(self) -> None:
        """
        BODY[1] of a non-multipart message is its body; BODY[1.MIME] its
        header; BODY[1.1] and BODY[2] do not exist.
        """
        data = b"Subject: s\n\nthe body\n"
        self.assertEqual(self.resolve(data, b"1"), b"the body\r\n")
        self.assertEqual(self.resolve(data, b"1.MIME"), b"Subject: s\r\n\r\n")
        self.assertEqual(self.resolve(data, b"1.1"), b"")
        self.assertEqual(self.resolve(data, b"2"), b"")

    def test_messagePart(self) -> None:
        """
        HEADER, TEXT and HEADER.FIELDS of a message/rfc822 part are those
        of the message it holds; of other parts, empty.
        """
        data = sample("nested.eml")
        self.assertEqual(self.resolve(data, b"2.HEADER.FIELDS (subject)"), b"Subject: the inner one\r\n\r\n")
        self.assertEqual(self.resolve(data, b"2.1.MIME"), b'Content-Type: text/plain; name*0="long"; name*1="name.txt"\r\n\r\n')
        self.assertEqual(self.resolve(data, b"1.HEADER"), b"")
        self.assertEqual(self.resolve(data, b"1.1.TEXT"), b"")

    def test_uncachedHeader(self) -> None:
        """
        A header longer than MAX_HEADER is given as a range of the file.
        """
        data = b"Subject: s\n" + b"X-A: b\n" * 50000 + b"\nbody\n"
        parsed = mime.parseBytes(data)
        result = _render.resolveSection(parsed, Section.fromSpec(b"HEADER"))
        self.assertEqual(result, Range(0, len(data) - 5, len(toWire(data)) - 6))
        self.assertEqual(_render.resolveSection(parsed, Section.fromSpec(b"HEADER.FIELDS (SUBJECT)")), b"Subject: s\r\n\r\n")

    def test_mimeOfWholeMessage(self) -> None:
        """
        MIME needs a part number.
        """
        parsed = mime.parseBytes(b"Subject: s\n\nx")
        self.assertRaises(SectionError, _render.resolveSection, parsed, Section((), "MIME"))

    def test_everyPartResolves(self) -> None:
        """
        For every part of every sample, BODY[n] and BODY[n.MIME] are ranges
        whose wire length is right.
        """
        samples = sorted(n for n in os.listdir(SAMPLES) if n.endswith(".eml"))
        for name in samples:
            data = sample(name)
            parsed = mime.parseBytes(data)
            paths: List[Tuple[int, ...]] = [(1,)]
            while paths:
                path = paths.pop()
                result = _render.resolveSection(parsed, Section(path))
                if result == b"" or len(path) > 6:
                    continue
                sectionBytes(data, result, None)
                sectionBytes(data, _render.resolveSection(parsed, Section(path, "MIME")), None)
                paths.extend([path + (1,), path[:-1] + (path[-1] + 1,)])


class MutationTests(SynchronousTestCase):
    def test_mutatedSamples(self) -> None:
        """
        Samples with random octets changed, inserted, deleted or lines
        repeated (a seeded, repeatable fuzz): parsing, rendering, sections,
        SEARCH's body text and the cache round trip never raise, and the
        offsets stay consistent.
        """
        import io
        import random

        from mailnet.imap import search

        rng = random.Random(12)
        names = sorted(n for n in os.listdir(SAMPLES) if n.endswith(".eml"))
        alphabet = b'\n\r \t-:;="<>()@,.\\\x00\xff=?BQ' + b"--b\n" + b"boundary"
        for _ in range(300):
            data = bytearray(sample(rng.choice(names)))
            for _ in range(rng.randint(1, 12)):
                i = rng.randrange(len(data) + 1)
                op = rng.random()
                if op < 0.4:
                    data[i:i + 1] = bytes([rng.choice(alphabet)])
                elif op < 0.7:
                    data[i:i] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 5)))
                elif op < 0.9:
                    del data[i:i + rng.randint(1, 20)]
                else:
                    line = data.rfind(b"\n", 0, i) + 1
                    end = data.find(b"\n", i)
                    data[line:line] = data[line:end + 1 if end >= 0 else len(data)] * rng.randint(1, 50)
            stored = bytes(data)
            parsed = mime.parseBytes(stored)
            _render.envelope(parsed.envelope)
            _render.bodyStructure(parsed.root, True)
            _render.bodyStructure(parsed.root, False)
            self.assertEqual(parsed.root.wireEnd, len(toWire(stored)))
            for spec in [b"", b"HEADER", b"TEXT", b"1", b"1.MIME", b"2", b"2.HEADER", b"2.TEXT", b"1.1", b"2.1.MIME",
                         b"HEADER.FIELDS (FROM TO)", b"3.HEADER.FIELDS.NOT (SUBJECT)"]:
                result = _render.resolveSection(parsed, Section.fromSpec(spec))
                if isinstance(result, Range):
                    self.assertTrue(0 <= result.storedStart <= result.storedEnd <= len(stored), (spec, result))
                    self.assertGreaterEqual(result.wireLength, result.storedEnd - result.storedStart)
            self.assertIsInstance(search.bodyText(io.BytesIO(stored), parsed, 10**6), str)
            self.assertEqual(mime.ParsedMessage.fromBytes(parsed.toBytes()), parsed)


class HostileHeaderTests(SynchronousTestCase):
    def test_linearTime(self) -> None:
        """
        Header values built to make patterns backtrack (long runs of white
        space, parentheses, quotes, angle brackets) are parsed and rendered
        in linear time.
        """
        import time

        from mailnet.imap import search

        n = 50000
        values = [b"a" + b" " * n + b"x", b" " * n + b"<", b"a" + b" " * n + b"<a@b> x", b"a@b" + b" " * n + b"x", b"(" * n,
                  b'"' * n, b"<" * n, b"@" * n, b":" * n, b"a," * n, b"a " * n, b"=?a" * n, b"=?utf-8?q?" * n]
        started = time.perf_counter()
        for value in values:
            _render.addressList(value)
            search.decodeHeader(value)
            search.normalisedAddresses(value)
            search.sentDay(value)
            mime.parseParameters(value)
            mime._parseLanguage(value)
        search.sentDay(b"1" + b" " * n + b"x")
        self.assertLess(time.perf_counter() - started, 10)


class EnvelopeMemoTests(SynchronousTestCase):
    def test_renderedOnce(self) -> None:
        """
        messageEnvelope renders a parsed message's ENVELOPE once and keeps
        it with the message (the store keeps parsed messages in memory);
        the message still serialises and compares as before.
        """
        parsed = mime.parseBytes(b"From: A <a@x.test>\nTo: b@x.test, C <c@y.test>\nSubject: hi\n\nbody\n")
        calls: List[mime.Envelope] = []
        real = _render.envelope
        self.patch(_render, "envelope", lambda env: calls.append(env) or real(env))
        first = _render.messageEnvelope(parsed)
        self.assertEqual(first, real(parsed.envelope))
        self.assertIs(_render.messageEnvelope(parsed), first)
        self.assertEqual(len(calls), 1)
        self.assertEqual(mime.ParsedMessage.fromBytes(parsed.toBytes()), parsed)

    def test_addressListCacheIsPerValue(self) -> None:
        """Short address fields are rendered through a cache: each value still gets its own rendering."""
        self.assertEqual(_render.addressList(b"a@x.test"), b'((NIL NIL "a" "x.test"))')
        self.assertEqual(_render.addressList(b"b@x.test"), b'((NIL NIL "b" "x.test"))')
        self.assertEqual(_render.addressList(b"a@x.test"), b'((NIL NIL "a" "x.test"))')
        long = b", ".join(b"u%d@x.test" % i for i in range(40))
        self.assertEqual(_render.addressList(long).count(b"(NIL NIL"), 40)
