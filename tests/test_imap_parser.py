"""
Tests for L{mailnet.imap._parser} and L{mailnet.imap._sequence}: commands
from bytes, literals, and hostile input.
"""

from typing import Any, List

from twisted.trial.unittest import SynchronousTestCase

from mailnet.imap._parser import (
    Atom,
    Command,
    CommandReader,
    Continue,
    LiteralData,
    LiteralStart,
    LiteralStream,
    ParseError,
    String,
    astring,
)
from mailnet.imap._sequence import MAX_RANGES, SequenceError, parseSequenceSet


def events(reader: CommandReader, data: bytes = b"", stream: bool = True) -> List[Any]:
    if data:
        reader.feed(data)
    out = []
    while True:
        event = reader.next()
        if event is None:
            return out
        out.append(event)
        if isinstance(event, LiteralStart):
            if stream:
                reader.streamLiteral()
            else:
                reader.refuseLiteral()


class TokenTests(SynchronousTestCase):
    def test_atomsStringsLists(self) -> None:
        [command] = events(CommandReader(), b'a1 STORE 1:5,7 +FLAGS (\\Seen $Junk) "quo\\"ted" NIL\r\n')
        self.assertEqual(command.tag, b"a1")
        self.assertEqual(command.verb, b"STORE")
        self.assertEqual(
            command.args,
            [Atom(b"1:5,7"), Atom(b"+FLAGS"), [Atom(b"\\Seen"), Atom(b"$Junk")], String(b'quo"ted'), Atom(b"NIL")],
        )

    def test_verbUpperCased(self) -> None:
        [command] = events(CommandReader(), b"x uid fetch 1 flags\r\n")
        self.assertEqual((command.verb, command.args[0].upper()), (b"UID", b"FETCH"))
        self.assertTrue(command.args[0].isName(b"fetch"))

    def test_emptyList(self) -> None:
        [command] = events(CommandReader(), b"a ENABLE ()\r\n")
        self.assertEqual(command.args, [[]])

    def test_lfOnly(self) -> None:
        [command] = events(CommandReader(), b"a NOOP\n")
        self.assertEqual(command, Command(b"a", b"NOOP", []))

    def test_emptyLinesIgnored(self) -> None:
        self.assertEqual(events(CommandReader(), b"\r\n\r\na NOOP\r\n"), [Command(b"a", b"NOOP", [])])

    def test_section(self) -> None:
        """A section runs to its ], spaces and parentheses included, then through <o.n>."""
        [command] = events(CommandReader(), b'a FETCH 1 (BODY.PEEK[HEADER.FIELDS (From "To")]<0.100> BODY[])\r\n')
        self.assertEqual(
            command.args[1], [Atom(b'BODY.PEEK[HEADER.FIELDS (From "To")]<0.100>'), Atom(b"BODY[]")]
        )

    def test_bracketOutsideSection(self) -> None:
        """Only BODY/BINARY atoms open a section: a mailbox name may hold [."""
        [command] = events(CommandReader(), b"a SELECT foo[bar\r\n")
        self.assertEqual(command.args, [Atom(b"foo[bar")])

    def test_astring(self) -> None:
        self.assertEqual(astring(Atom(b"x")), b"x")
        self.assertEqual(astring(String(b"y")), b"y")
        self.assertIsNone(astring([]))

    def test_stringEqualityIgnoresForm(self) -> None:
        self.assertEqual(String(b"a", literal=True), String(b"a"))


class LiteralTests(SynchronousTestCase):
    def test_synchronising(self) -> None:
        reader = CommandReader()
        self.assertEqual(events(reader, b"a LOGIN {5}\r\n"), [Continue()])
        self.assertEqual(events(reader, b"al"), [])
        [command] = events(reader, b'ice "pw"\r\n')
        self.assertEqual(command.args, [String(b"alice", literal=True), String(b"pw")])

    def test_nonSynchronising(self) -> None:
        [command] = events(CommandReader(), b"a LOGIN {5+}\r\nalice {2+}\r\npw\r\n")
        self.assertEqual(command.args, [String(b"alice"), String(b"pw")])

    def test_literalWithCRLFInside(self) -> None:
        [command] = events(CommandReader(), b"a X {4+}\r\n\r\n\r\n\r\n")
        self.assertEqual(command.args, [String(b"\r\n\r\n")])

    def test_emptyLiteral(self) -> None:
        [command] = events(CommandReader(), b"a X {0+}\r\n\r\n")
        self.assertEqual(command.args, [String(b"")])

    def test_appendStreamed(self) -> None:
        reader = CommandReader()
        got = events(reader, b"a APPEND INBOX (\\Seen) {10}\r\n")
        self.assertEqual(got, [LiteralStart(Command(b"a", b"APPEND", [Atom(b"INBOX"), [Atom(b"\\Seen")]]), 10, True, False)])
        self.assertEqual(events(reader, b"12345"), [LiteralData(b"12345")])
        got = events(reader, b"67890\r\n")
        self.assertEqual(got[0], LiteralData(b"67890"))
        self.assertEqual(got[1].args[-1], LiteralStream(10))

    def test_appendEmptyLiteral(self) -> None:
        got = events(CommandReader(), b"a APPEND INBOX {0+}\r\n\r\n")
        self.assertEqual(got[-1].args, [Atom(b"INBOX"), LiteralStream(0)])

    def test_appendMailboxAsLiteralIsCollected(self) -> None:
        got = events(CommandReader(), b"a APPEND {5+}\r\nINBOX {1+}\r\nx\r\n")
        self.assertEqual(got[0].command.args, [String(b"INBOX")])

    def test_refusedSynchronisingLiteral(self) -> None:
        """The client waits for + and will not send it: the next line is a command."""
        reader = CommandReader()
        events(reader, b"a APPEND INBOX {10}\r\n", stream=False)
        self.assertEqual(events(reader, b"b NOOP\r\n"), [Command(b"b", b"NOOP", [])])

    def test_refusedNonSynchronisingLiteral(self) -> None:
        """Its octets arrive anyway and are skipped, not read as commands."""
        reader = CommandReader()
        got = events(reader, b"a APPEND INBOX {10+}\r\nb NOOP\r\nx\r\nc NOOP\r\n", stream=False)
        self.assertEqual(got[1:], [Command(b"c", b"NOOP", [])])

    def test_literalOverLimitSynchronising(self) -> None:
        """Refused before the client sends it (RFC 9051 §7.1: BAD, TOOBIG)."""
        reader = CommandReader(maxLiteral=100)
        [error] = events(reader, b"a LOGIN {101}\r\n")
        self.assertEqual(error, ParseError(b"a", "Literal too large", b"TOOBIG"))
        self.assertEqual(events(reader, b"b NOOP\r\n"), [Command(b"b", b"NOOP", [])])

    def test_literalOverLimitNonSynchronising(self) -> None:
        """
        RFC 7888 §4: an over-limit non-synchronising literal is read and
        thrown away (never kept), then BAD; the connection goes on.
        """
        reader = CommandReader(maxLiteral=100)
        [error] = events(reader, b"a LOGIN {200+}\r\n")
        self.assertEqual(error.tag, b"a")
        self.assertEqual(error.code, b"TOOBIG")
        self.assertFalse(error.fatal)
        self.assertEqual(events(reader, b"x" * 150), [])
        self.assertLess(reader.buffered(), 100)
        self.assertEqual(events(reader, b"b NOOP\r\n" * 0 + b"y" * 50 + b" pw\r\nc NOOP\r\n"), [Command(b"c", b"NOOP", [])])

    def test_hugeNonSynchronisingLiteralIsFatal(self) -> None:
        """Past the discard limit the connection is not worth keeping."""
        reader = CommandReader(maxDiscard=1000)
        [error] = events(reader, b"a LOGIN {99999999999+}\r\n")
        self.assertTrue(error.fatal)

    def test_unterminatedLiteral(self) -> None:
        """A literal that never ends holds nothing beyond its announced size."""
        reader = CommandReader()
        self.assertEqual(events(reader, b"a LOGIN {60000}\r\n"), [Continue()])
        self.assertEqual(events(reader, b"x" * 1000), [])


class HostileInputTests(SynchronousTestCase):
    def test_deepNesting(self) -> None:
        """10,000 nested parentheses: BAD, not a recursion error."""
        reader = CommandReader()
        [error] = events(reader, b"a FETCH 1 " + b"(" * 10000 + b")" * 10000 + b"\r\n")
        self.assertEqual((error.tag, error.text), (b"a", "Too deeply nested"))
        self.assertEqual(events(reader, b"b NOOP\r\n"), [Command(b"b", b"NOOP", [])])

    def test_longLine(self) -> None:
        reader = CommandReader(maxLine=1000)
        [error] = events(reader, b"a NOOP " + b"x" * 2000)
        self.assertEqual((error.tag, error.text), (b"a", "Command line too long"))
        self.assertEqual(reader.buffered(), 0)
        self.assertEqual(events(reader, b"yyy\r\nb NOOP\r\n"), [Command(b"b", b"NOOP", [])])

    def test_tooManyTokens(self) -> None:
        reader = CommandReader(maxTokens=100)
        [error] = events(reader, b"a X" + b" y" * 200 + b"\r\n")
        self.assertEqual(error.text, "Too many arguments")

    def test_manyLiterals(self) -> None:
        """Literals within the limit each, but too much together."""
        reader = CommandReader(maxLiteral=100, maxCommand=1000)
        [error] = events(reader, b"a X" + b" {100+}\r\n" + b"z" * 100 + b" {100+}\r\n" + b"z" * 100 + b" {900+}\r\n")
        self.assertEqual(error.code, b"TOOBIG")

    def test_badQuoted(self) -> None:
        for line in [b'a LOGIN "unterminated\r\n', b'a LOGIN "bad\\x"\r\n', b"a LOGIN x)\r\n", b"a LOGIN (x\r\n"]:
            [error] = events(CommandReader(), line)
            self.assertIsInstance(error, ParseError, line)
            self.assertEqual(error.tag, b"a")

    def test_noTag(self) -> None:
        [error] = events(CommandReader(), b" NOOP\r\n")
        self.assertIsNone(error.tag)

    def test_missingCommand(self) -> None:
        [error] = events(CommandReader(), b"a\r\n")
        self.assertEqual(error.text, "Missing command")

    def test_controlCharacters(self) -> None:
        [error] = events(CommandReader(), b"a LOGIN x\x00y\r\n")
        self.assertIsInstance(error, ParseError)

    def test_clear(self) -> None:
        """STARTTLS: what came after it is dropped, half-read commands too."""
        reader = CommandReader()
        events(reader, b"a LOGIN {5}\r\nal")
        reader.clear()
        self.assertEqual(reader.buffered(), 0)
        self.assertEqual(events(reader, b"b NOOP\r\n"), [Command(b"b", b"NOOP", [])])

    def test_readLine(self) -> None:
        reader = CommandReader(maxLine=10)
        reader.feed(b"DONE\r\nb NOOP\r\n")
        self.assertEqual(reader.readLine(), b"DONE")
        self.assertEqual(events(reader), [Command(b"b", b"NOOP", [])])
        reader.feed(b"x" * 20)
        self.assertEqual(reader.readLine(), b"\0")


class SequenceSetTests(SynchronousTestCase):
    def test_parse(self) -> None:
        s = parseSequenceSet(b"1:3,7,9:*,12:10")
        self.assertEqual(s.ranges, ((1, 3), (7, 7), (9, None), (12, 10)))
        self.assertEqual(s.resolved(20), [(1, 3), (7, 7), (9, 20)])
        self.assertEqual(list(s.iterate(10)), [1, 2, 3, 7, 9, 10])
        self.assertTrue(s.contains(15, 20))
        self.assertFalse(s.contains(8, 20))

    def test_starBelowRange(self) -> None:
        """RFC 9051 §9: 5:* with * = 3 is 3:5."""
        self.assertEqual(parseSequenceSet(b"5:*").resolved(3), [(3, 5)])

    def test_select(self) -> None:
        s = parseSequenceSet(b"2:6,100:*")
        self.assertEqual(s.select([1, 2, 5, 7, 150, 200]), [2, 5, 150, 200])
        self.assertEqual(parseSequenceSet(b"*").select([4, 9]), [9])

    def test_invalid(self) -> None:
        for text in [b"", b"0", b"1:", b"a", b"1,,2", b"01", b"99999999999", b"4294967296"]:
            self.assertRaises(SequenceError, parseSequenceSet, text)

    def test_tooManyRanges(self) -> None:
        """100,000 ranges: refused, cheaply."""
        text = b",".join(b"%d" % (i * 2 + 1,) for i in range(100000))
        self.assertRaises(SequenceError, parseSequenceSet, text)
        self.assertEqual(len(parseSequenceSet(b",".join([b"1"] * (MAX_RANGES - 1))).ranges), MAX_RANGES - 1)
