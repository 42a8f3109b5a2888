# -*- test-case-name: tests.test_imap_search -*-
"""
Tests for L{mailnet.imap.search}: every RFC 9051 search key, CONDSTORE's
MODSEQ, SEARCHRES's C{$}, decoded matching of headers (RFC 2047) and
bodies (quoted-printable, base64, charsets, HTML), and the bounds.  The
criteria are parsed by the server's own command reader.
"""

import calendar
import email.policy
import io
import json
import os
import time
from email.message import EmailMessage
from typing import Any, Dict, List, Optional

import attr
from twisted.trial.unittest import SynchronousTestCase

from mailnet import mime
from mailnet.imap import search
from mailnet.imap._parser import Atom, Command, CommandReader, String
from mailnet.store.records import MessageRecord

from .test_mime import SAMPLES, sample, sampleNames

POLICY = email.policy.default.clone(linesep="\n")


def criteria(text: bytes) -> List[Any]:
    """The argument tokens of C{SEARCH text}, as the server gets them."""
    reader = CommandReader()
    reader.feed(b"A1 SEARCH " + text + b"\r\n")
    command = reader.next()
    assert isinstance(command, Command), command
    return command.args


@attr.s(auto_attribs=True)
class Context:
    seq: int
    record: MessageRecord
    parsed: Optional[mime.ParsedMessage]
    stored: bytes
    maxSeq: int
    maxUid: int
    previousSearch: List[int] = attr.Factory(list)
    bodyCalls: int = 0

    def body(self) -> str:
        self.bodyCalls += 1
        assert self.parsed is not None
        return search.bodyText(io.BytesIO(self.stored), self.parsed, 10 * 1024 * 1024)


def day(y: int, m: int, d: int, hour: int = 12) -> float:
    return float(calendar.timegm((y, m, d, hour, 0, 0, 0, 0, 0)))


def composed(subject: str, body: str, **kw: Any) -> bytes:
    m = EmailMessage()
    m["From"] = kw.get("sender", "Jörg Müller <joerg@example.test>")
    m["To"] = kw.get("to", "bob@example.test")
    if "cc" in kw:
        m["Cc"] = kw["cc"]
    m["Subject"] = subject
    m["Date"] = kw.get("date", "Fri, 04 Dec 2026 18:00:00 +0100")
    for name, value in kw.get("headers", {}).items():
        m[name] = value
    m.set_content(body, cte=kw.get("cte"), charset=kw.get("charset", "utf-8"))
    if "html" in kw:
        m.add_alternative(kw["html"], subtype="html", cte="base64")
    return m.as_bytes(policy=POLICY)


class Mailbox:
    """A few messages to search, numbered 1, 2, ... (UIDs 10, 20, ...)."""

    def __init__(self, messages: List[Dict[str, Any]]) -> None:
        self.contexts = []
        for i, spec in enumerate(messages, 1):
            data = spec["data"]
            record = MessageRecord(
                uid=i * 10,
                flags=frozenset(spec.get("flags", ())),
                modSeq=spec.get("modseq", i),
                internalDate=spec.get("date", day(2026, 12, i)),
                size=len(data) + data.count(b"\n"),
                key="k%d" % i,
            )
            self.contexts.append(Context(i, record, mime.parseBytes(data), data, len(messages), len(messages) * 10))

    def search(self, text: bytes, charset: Optional[str] = None, previous: Optional[List[int]] = None) -> List[int]:
        compiled = search.compile(criteria(text), charset)
        hits = []
        for c in self.contexts:
            c.previousSearch = previous or []
            if c.parsed is not None and not (compiled.needs & {"headers", "body"}):
                c = attr.evolve(c, parsed=None)  # not needed: not supplied
            if compiled.matches(c):
                hits.append(c.seq)
        return hits


class KeyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.box = Mailbox(
            [
                {"data": composed("Grüße aus Köln", "schöne Grüße, Jörg\n", cte="quoted-printable", charset="iso-8859-1"),
                 "flags": {"\\Seen", "\\Answered", "$Important"}},
                {"data": composed("Invoice 42", "Please pay.\n", sender="Billing <bill@shop.test>", cc="Ann <ann@x.test>",
                                  headers={"X-Spam-Flag": "YES", "List-Id": "<list.example.test>"}, cte="base64"),
                 "flags": {"\\Flagged", "\\Recent"}},
                {"data": composed("=?utf-8?q?not_encoded?= plain", "just text\n", date="Sat, 5 Dec 2026 23:30:00 -0800",
                                  html="<p>Visit <b>our</b> caf&eacute;</p>\n"),
                 "flags": {"\\Deleted", "\\Draft", "\\Recent", "\\Seen"}, "modseq": 50},
                {"data": sample("nested.eml"), "flags": set()},
            ]
        )

    def assertSearch(self, text: bytes, expected: List[int], **kw: Any) -> None:
        self.assertEqual(self.box.search(text, **kw), expected, text)

    def test_all(self) -> None:
        self.assertSearch(b"ALL", [1, 2, 3, 4])

    def test_flags(self) -> None:
        """
        The system flag keys and their UN- forms; NEW, OLD, RECENT.
        """
        self.assertSearch(b"ANSWERED", [1])
        self.assertSearch(b"UNANSWERED", [2, 3, 4])
        self.assertSearch(b"DELETED", [3])
        self.assertSearch(b"UNDELETED", [1, 2, 4])
        self.assertSearch(b"DRAFT", [3])
        self.assertSearch(b"UNDRAFT", [1, 2, 4])
        self.assertSearch(b"FLAGGED", [2])
        self.assertSearch(b"UNFLAGGED", [1, 3, 4])
        self.assertSearch(b"SEEN", [1, 3])
        self.assertSearch(b"UNSEEN", [2, 4])
        self.assertSearch(b"RECENT", [2, 3])
        self.assertSearch(b"OLD", [1, 4])
        self.assertSearch(b"NEW", [2])

    def test_keywords(self) -> None:
        """
        KEYWORD and UNKEYWORD compare case-insensitively.
        """
        self.assertSearch(b"KEYWORD $important", [1])
        self.assertSearch(b"UNKEYWORD $IMPORTANT", [2, 3, 4])
        self.assertSearch(b"KEYWORD $Other", [])

    def test_addressFields(self) -> None:
        """
        FROM, TO, CC, BCC match the whole decoded field.
        """
        self.assertSearch(b"FROM m\xc3\xbcller", [1, 3], charset="UTF-8")
        self.assertSearch(b"FROM joerg@example", [1, 3])
        self.assertSearch(b'FROM "billing <bill"', [2])
        self.assertSearch(b"TO bob", [1, 2, 3])
        self.assertSearch(b"TO r@example.test", [4])
        self.assertSearch(b"CC ann", [2])
        self.assertSearch(b"BCC ann", [])

    def test_normalisedAddresses(self) -> None:
        """
        Address fields also match as Dovecot writes them again: comments
        and extra white space gone (imaptest's search-addresses).
        """
        box = Mailbox(
            [
                {"data": b"From: <user-from (comment)@ (comment) domain.org>\n\nx\n"},
                {"data": b"From: user-from@domain.org (RealFrom)\n\nx\n"},
                {"data": b"From: =?utf-8?q?R=C3=A9al?= <user-from@domain.org>\n\nx\n"},
            ]
        )
        self.assertEqual(box.search(b"FROM user-from@domain.org"), [1, 2, 3])
        self.assertEqual(box.search(b"FROM realfrom"), [2])
        self.assertEqual(box.search(b'FROM "r\xc3\xa9al <user-from@"', charset="UTF-8"), [3])

    def test_subject(self) -> None:
        """
        SUBJECT matches the decoded subject, case-insensitively (also
        non-ASCII letters; by Unicode case folding, so "SS" matches "ß").
        """
        self.assertSearch(b'SUBJECT "GR\xc3\x9cSSE"', [1], charset="UTF-8")
        self.assertSearch(b'SUBJECT "gr\xc3\xbc\xc3\x9fe aus"', [1], charset="UTF-8")
        self.assertSearch(b'SUBJECT "K\xc3\x96LN"', [1], charset="UTF-8")
        self.assertSearch(b"SUBJECT invoice", [2])
        self.assertSearch(b'SUBJECT ""', [1, 2, 3, 4])

    def test_header(self) -> None:
        """
        HEADER field string; an empty string matches every message that
        has the field.
        """
        self.assertSearch(b"HEADER X-Spam-Flag yes", [2])
        self.assertSearch(b'HEADER list-id ""', [2])
        self.assertSearch(b'HEADER Message-ID ""', [])
        self.assertSearch(b"HEADER Content-Type multipart", [3, 4])

    def test_body(self) -> None:
        """
        BODY matches decoded text parts: quoted-printable latin-1, base64,
        HTML without its tags; not the header.
        """
        self.assertSearch(b'BODY "sch\xc3\xb6ne gr\xc3\xbc\xc3\x9fe"', [1], charset="UTF-8")
        self.assertSearch(b'BODY "please pay"', [2])
        self.assertSearch(b'BODY "our caf\xc3\xa9"', [3], charset="UTF-8")
        self.assertSearch(b"BODY invoice", [])
        self.assertSearch(b'BODY "deep text"', [4])
        self.assertSearch(b'BODY "digest body"', [4])

    def test_text(self) -> None:
        """
        TEXT matches the header or the body.
        """
        self.assertSearch(b"TEXT invoice", [2])
        self.assertSearch(b"TEXT pay", [2])
        self.assertSearch(b"TEXT x-spam-flag", [2])

    def test_partHeaders(self) -> None:
        """
        The headers of MIME parts and enclosed messages: TEXT searches them,
        BODY does not (as Dovecot).
        """
        self.assertSearch(b'TEXT "the inner one"', [4])
        self.assertSearch(b'BODY "the inner one"', [])
        self.assertSearch(b"TEXT Content-Language", [4])
        self.assertSearch(b"BODY Content-Language", [])
        self.assertSearch(b'TEXT "digest entry"', [4])

    def test_htmlMarkup(self) -> None:
        """
        HTML is searched with its markup and without.
        """
        self.assertSearch(b'BODY "<b>our</b>"', [3])
        self.assertSearch(b'BODY "visit our"', [3])

    def test_internalDate(self) -> None:
        """
        BEFORE, ON, SINCE compare the internal date's day (UTC).
        """
        self.assertSearch(b"ON 2-Dec-2026", [2])
        self.assertSearch(b'ON "2-dec-2026"', [2])
        self.assertSearch(b"BEFORE 3-Dec-2026", [1, 2])
        self.assertSearch(b"SINCE 3-Dec-2026", [3, 4])
        self.assertSearch(b"SINCE 1-Jan-2027", [])

    def test_sentDate(self) -> None:
        """
        SENTBEFORE, SENTON, SENTSINCE compare the Date: field's day as
        written (not in UTC); a message without a Date: field counts as
        sent on 1 January 1970, as in Dovecot.
        """
        self.assertSearch(b"SENTON 4-Dec-2026", [1, 2])
        self.assertSearch(b"SENTON 5-Dec-2026", [3])
        self.assertSearch(b"SENTBEFORE 5-Dec-2026", [1, 2, 4])
        self.assertSearch(b"SENTSINCE 5-Dec-2026", [3])
        self.assertSearch(b"SENTON 1-Jan-1970", [4])
        self.assertSearch(b"NOT SENTSINCE 1-Jan-1970", [])

    def test_sizes(self) -> None:
        sizes = [c.record.size for c in self.box.contexts]
        self.assertSearch(b"LARGER %d" % (sizes[0],), [n for n, s in enumerate(sizes, 1) if s > sizes[0]])
        self.assertSearch(b"SMALLER %d" % (sizes[0],), [n for n, s in enumerate(sizes, 1) if s < sizes[0]])

    def test_logic(self) -> None:
        """
        Implicit AND, NOT, OR, parenthesised lists.
        """
        self.assertSearch(b"SEEN UNDELETED", [1])
        self.assertSearch(b"NOT SEEN", [2, 4])
        self.assertSearch(b"OR FLAGGED DELETED", [2, 3])
        self.assertSearch(b"OR (SEEN DELETED) (FLAGGED RECENT)", [2, 3])
        self.assertSearch(b"NOT (SEEN OR DRAFT FLAGGED)", [1, 2, 4])
        self.assertSearch(b"((((ALL))))", [1, 2, 3, 4])

    def test_sequenceSets(self) -> None:
        """
        Message numbers and UIDs, with *.
        """
        self.assertSearch(b"2:3", [2, 3])
        self.assertSearch(b"1,4", [1, 4])
        self.assertSearch(b"*", [4])
        self.assertSearch(b"3:*", [3, 4])
        self.assertSearch(b"UID 20,40", [2, 4])
        self.assertSearch(b"UID 25:*", [3, 4])
        self.assertSearch(b"UID *", [4])
        self.assertSearch(b"UNSEEN 1:3", [2])

    def test_modSeq(self) -> None:
        """
        MODSEQ, with or without an entry name.
        """
        self.assertSearch(b"MODSEQ 4", [3, 4])
        self.assertSearch(b'MODSEQ "/flags/\\\\draft" all 5', [3])
        compiled = search.compile(criteria(b"MODSEQ 1"))
        self.assertTrue(compiled.usesModSeq)
        self.assertFalse(search.compile(criteria(b"ALL")).usesModSeq)

    def test_saved(self) -> None:
        """
        $ is the saved result (UIDs), also after UID.
        """
        self.assertSearch(b"$", [1, 3], previous=[10, 30])
        self.assertSearch(b"UID $ SEEN", [1, 3], previous=[10, 30])
        self.assertSearch(b"NOT $", [1, 2, 3, 4], previous=[])

    def test_needs(self) -> None:
        """
        needs says what the server must supply.
        """
        self.assertEqual(search.compile(criteria(b"SEEN UID 1:5")).needs, {"flags", "uid"})
        self.assertEqual(search.compile(criteria(b"SUBJECT x")).needs, {"headers"})
        self.assertEqual(search.compile(criteria(b"BODY x")).needs, {"body"})
        self.assertEqual(search.compile(criteria(b"TEXT x LARGER 5")).needs, {"headers", "body", "size"})
        self.assertEqual(search.compile(criteria(b"SINCE 1-Jan-2020 1:2")).needs, {"date", "seq"})

    def test_bodyOnlyWhenNeeded(self) -> None:
        """
        The body is decoded once per message, and only when a key asks
        for it.
        """
        compiled = search.compile(criteria(b"OR BODY x BODY y"))
        context = self.box.contexts[0]
        compiled.matches(context)
        self.assertEqual(context.bodyCalls, 1)
        search.compile(criteria(b"SUBJECT x")).matches(context)
        self.assertEqual(context.bodyCalls, 1)

    def test_literalArgument(self) -> None:
        """
        Strings may be literals.
        """
        self.assertEqual(
            [c.seq for c in self.box.contexts if search.compile([Atom(b"SUBJECT"), String(b"Invoice", literal=True)]).matches(c)], [2]
        )


class DovecotOracleTests(SynchronousTestCase):
    def test_sameAsDovecot(self) -> None:
        """
        About 50 header, body, text and date searches over the sample
        messages find what Dovecot 2.3 finds
        (C{tests/samples/imap/dovecot-search.json}, recorded by
        C{record_dovecot.py}).
        """
        with open(os.path.join(SAMPLES, "dovecot-search.json"), encoding="utf-8") as f:
            recorded = json.load(f)
        names = sampleNames()
        box = Mailbox([{"data": sample(n)} for n in names])
        for query, expected in recorded.items():
            found = [names[n - 1] for n in box.search(query.encode("utf-8"), charset="UTF-8")]
            self.assertEqual(found, expected, query)
        self.assertGreater(len(recorded), 40)


class ErrorTests(SynchronousTestCase):
    def assertBad(self, text: bytes) -> None:
        self.assertRaises(search.SearchError, search.compile, criteria(text), None)

    def test_invalid(self) -> None:
        """
        Unknown keys, missing or malformed arguments: SearchError.
        """
        for text in [b"BOGUS", b"SUBJECT", b"OR SEEN", b"NOT", b"BEFORE 32-Foo-2020", b"ON yesterday", b"LARGER x",
                     b"UID", b"UID (1)", b"1:x", b"0", b"HEADER", b"HEADER Subject", b"KEYWORD", b"()", b"MODSEQ",
                     b'MODSEQ "/flags/x" wrong 5', b"SMALLER 123456789012345678901234"]:
            self.assertBad(text)

    def test_errorTextPrintable(self) -> None:
        """
        What the client sent reaches the BAD text only as printable ASCII,
        at most 40 octets of it.
        """
        e = self.assertRaises(search.SearchError, search.compile, [Atom(b"\xff\x1b[2J" + b"X" * 100)])
        self.assertEqual(str(e), "Unknown search key ??[2J" + "X" * 35)
        e = self.assertRaises(search.SearchError, search.compile, [Atom(b"ALL")], "\x1b\u00e9")
        self.assertEqual(str(e), "Unsupported charset ???")

    def test_charset(self) -> None:
        """
        UTF-8 and US-ASCII are supported; other charsets raise a SearchError
        naming the charset (the server answers NO [BADCHARSET]).
        """
        search.compile(criteria(b"ALL"), "utf-8")
        search.compile(criteria(b"ALL"), "US-ASCII")
        e = self.assertRaises(search.SearchError, search.compile, criteria(b"ALL"), "ISO-8859-1")
        self.assertIn("charset", str(e).lower())

    def test_bounds(self) -> None:
        """
        Too many keys, too deep nesting, too long strings: SearchError, no
        RecursionError.
        """
        self.assertBad(b"SEEN " * (search.MAX_KEYS + 1))
        deep = [Atom(b"ALL")]
        for _ in range(5000):
            deep = [deep]
        self.assertRaises(search.SearchError, search.compile, deep)
        self.assertRaises(search.SearchError, search.compile, [Atom(b"NOT")] * 5000 + [Atom(b"ALL")])
        self.assertRaises(search.SearchError, search.compile, [Atom(b"OR")] * 5000 + [Atom(b"ALL")] * 5001)
        self.assertRaises(search.SearchError, search.compile, [Atom(b"SUBJECT"), String(b"x" * (search.MAX_STRING + 1))])

    def test_hugeSequenceSet(self) -> None:
        """
        A set of many ranges is tested by bisection, not range by range.
        """
        text = b",".join(b"%d" % (n,) for n in range(1, 40000, 2))
        compiled = search.compile([Atom(text)])
        record = MessageRecord(1, frozenset(), 1, 0.0, 10, "k")
        started = time.perf_counter()
        hits = [n for n in range(1, 20001) if compiled.matches(Context(n, record, None, b"", 20000, 20000))]
        self.assertLess(time.perf_counter() - started, 5)
        self.assertEqual(len(hits), 10000)
        self.assertRaises(search.SearchError, search.compile, [Atom(b"1," * 100000 + b"1")])


class DecodingTests(SynchronousTestCase):
    def test_decodeHeader(self) -> None:
        """
        RFC 2047 words decoded (B and Q, adjacent words joined), broken ones
        kept, 8-bit octets as UTF-8, nothing raises.
        """
        self.assertEqual(search.decodeHeader(b"=?utf-8?q?caf=C3=A9?= ok"), "café ok")
        self.assertEqual(search.decodeHeader(b"=?utf-8?b?w6k=?= =?utf-8?b?w6k=?="), "éé")
        self.assertEqual(search.decodeHeader(b"=?iso-8859-1?q?caf=E9?="), "café")
        self.assertEqual(search.decodeHeader(b"=?x-unknown?q?caf=C3=A9?="), "café")
        self.assertEqual(search.decodeHeader(b"Ren\xc3\xa9"), "René")
        for junk in [b"=?utf-8?b?####?=", b"=?utf-8?q?=ZZ?=", b"\xff\xfe", b"=?", b"=?utf-16?b?2D3d?="]:
            self.assertIsInstance(search.decodeHeader(junk), str)

    def test_bodyTextLimit(self) -> None:
        """
        bodyText reads at most the limit.
        """
        data = b"Subject: x\n\n" + b"a" * 10000 + b"needle\n"
        parsed = mime.parseBytes(data)
        self.assertNotIn("needle", search.bodyText(io.BytesIO(data), parsed, 1000))
        self.assertIn("needle", search.bodyText(io.BytesIO(data), parsed, 100000))

    def test_bodyTextSkipsAttachments(self) -> None:
        """
        Only text parts are searched.
        """
        data = sample("composed.eml")
        text = search.bodyText(io.BytesIO(data), mime.parseBytes(data), 10**7)
        self.assertIn("schöne Grüße", text)
        self.assertIn("forwarded text", text)
        self.assertNotIn("AAECAwQF", text)

    def test_brokenEncodings(self) -> None:
        """
        Broken base64 or quoted-printable and unknown charsets do not raise.
        """
        for cte, body in [(b"base64", b"!!!not base64 at all=\n"), (b"quoted-printable", b"=ZZ=\n=")]:
            data = b"Content-Type: text/plain; charset=x-nothing\nContent-Transfer-Encoding: " + cte + b"\n\n" + body
            self.assertIsInstance(search.bodyText(io.BytesIO(data), mime.parseBytes(data), 1000), str)

    def test_slowCodecsRefused(self) -> None:
        """
        A charset whose decoder is quadratic (punycode, IDNA) is read as
        UTF-8 instead: a large body must not take hours.
        """
        body = b"a" * 200000 + b"-" + b"99" * 200000
        for charset in [b"punycode", b"IDNA"]:
            data = b"Content-Type: text/plain; charset=" + charset + b"\n\n" + body
            started = time.perf_counter()
            search.bodyText(io.BytesIO(data), mime.parseBytes(data), 10**7)
            self.assertLess(time.perf_counter() - started, 2)
        self.assertEqual(search.decodeHeader(b"=?punycode?q?caf-dma?="), "caf-dma")

    def test_htmlLinear(self) -> None:
        """
        Removing HTML tags takes linear time, also on a run of "<".
        """
        data = b"Content-Type: text/html\n\n" + b"<" * 300000 + b"\n"
        started = time.perf_counter()
        search.bodyText(io.BytesIO(data), mime.parseBytes(data), 10**7)
        self.assertLess(time.perf_counter() - started, 2)

    def test_sentDay(self) -> None:
        self.assertEqual(search.sentDay(b"Tue, 1 Jul 2003 10:52:37 +0200"), (2003, 7, 1))
        self.assertEqual(search.sentDay(b"1 Jul 03 10:52 GMT"), (2003, 7, 1))
        self.assertEqual(search.sentDay(b"1 Jul 99 10:52 GMT"), (1999, 7, 1))
        self.assertIsNone(search.sentDay(b"yesterday"))
        self.assertIsNone(search.sentDay(None))



class DecodedFieldMemoTests(SynchronousTestCase):
    def test_decodedOnce(self) -> None:
        """
        An envelope field a search decoded is kept with the parsed message
        (which the store keeps in memory): the next search of the folder
        decodes nothing, and still matches as the first did.
        """
        box = Mailbox([{"data": composed("Grüße aus Köln", "text\n")}, {"data": composed("Invoice 42", "text\n")}])
        calls = []
        real = search.decodeHeader

        def counting(value: bytes) -> str:
            calls.append(value)
            return real(value)

        self.patch(search, "decodeHeader", counting)
        self.assertEqual(box.search(b"SUBJECT k\xc3\xb6ln"), [1])
        self.assertEqual(len(calls), 2)
        self.assertEqual(box.search(b"SUBJECT GR\xc3\x9c\xc3\x9fE"), [1])
        self.assertEqual(box.search(b"SUBJECT invoice"), [2])
        self.assertEqual(len(calls), 2)


class BodyFastPathTests(SynchronousTestCase):
    """
    BODY and TEXT look for a needle without white space in the case-folded
    text, without folding white space: the same answers as on the folded
    text.
    """

    def box(self, body: str) -> Mailbox:
        return Mailbox([{"data": composed("s", body)}])

    def test_ascii(self) -> None:
        box = self.box("Hello   World\n\tagain FOO\n")
        self.assertEqual(box.search(b"BODY world"), [1])
        self.assertEqual(box.search(b"BODY WORLD"), [1])
        self.assertEqual(box.search(b'BODY "hello world"'), [1])
        self.assertEqual(box.search(b'BODY "world again foo"'), [1])
        self.assertEqual(box.search(b"BODY helloworld"), [])
        self.assertEqual(box.search(b'TEXT "again foo"'), [1])

    def test_nonAscii(self) -> None:
        box = self.box("Straße   in KÖLN\n")
        self.assertEqual(box.search(b"BODY STRASSE"), [1])
        self.assertEqual(box.search(b"BODY k\xc3\xb6ln"), [1])
        self.assertEqual(box.search(b'BODY "strasse in"'), [1])
        self.assertEqual(box.search(b"BODY strassein"), [])
