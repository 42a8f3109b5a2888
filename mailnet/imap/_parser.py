# -*- test-case-name: tests.test_imap_parser -*-
"""
IMAP commands from bytes: a tag, a verb and argument tokens, with literals,
under hard limits.  Pure code, no Twisted.

The tokens (what a command handler, and L{mailnet.imap.search.compile},
receive as arguments):

  - L{Atom}: an atom (RFC 9051 §4.1), its octets as sent, case kept:
    C{Atom(b"FLAGS")}, C{Atom(b"1:5,7")}, C{Atom(b"\\\\Seen")},
    C{Atom(b"$")}, C{Atom(b"NIL")}.  Compare names with L{Atom.upper} or
    L{Atom.isName} (IMAP names are case-insensitive).  C{NIL} is an atom
    too: the commands that accept nil check for it (there is no L{None}
    token), since an unquoted NIL may also be a mailbox name.
  - Sequence sets are atoms: C{Atom(b"1:5,7,*")}; pass C{atom.value} to
    L{mailnet.imap._sequence.parseSequenceSet}.
  - An atom containing C{[} runs to the matching C{]} (spaces, parentheses
    and quoted strings inside included) and then through an optional
    C{<origin.count>}: C{BODY.PEEK[HEADER.FIELDS (From To)]<0.100>} is
    C{Atom(b"BODY.PEEK[HEADER.FIELDS (From To)]<0.100>")}, raw as sent; the
    FETCH code splits it (L{parseFetchAttribute}).  No literal is allowed
    inside brackets.
  - L{String}: a quoted string or a literal, its contents (quotes and
    backslash escapes removed; a literal's octets as sent):
    C{String(b"hello world")}.  C{String.literal} says which form it was
    (ignored by equality).  An astring argument is an L{Atom} or a
    L{String}: L{astring} gives its octets either way.
  - A parenthesised list is a Python L{list} of tokens (nested lists for
    nested parentheses): C{(\\\\Seen \\\\Flagged)} is
    C{[Atom(b"\\\\Seen"), Atom(b"\\\\Flagged")]}; C{()} is C{[]}.
  - L{LiteralStream}: only as the message argument of APPEND: the literal
    is not held in memory but handed to the command handler in chunks as it
    arrives; the token carries its announced size.

A command is a L{Command}: C{tag} (bytes), C{verb} (bytes, upper-cased),
C{args} (a L{list} of tokens).  C{UID FETCH 1:* FLAGS} has verb C{b"UID"}
and args C{[Atom(b"FETCH"), Atom(b"1:*"), Atom(b"FLAGS")]}.
"""

from typing import List, Optional, Union

import attr


@attr.s(frozen=True, slots=True)
class Atom:
    """
    An atom, its octets as sent.
    """

    value: bytes = attr.ib()

    def upper(self) -> bytes:
        """
        @return: the atom upper-cased (ASCII), for comparing names.
        """
        return self.value.upper()

    def isName(self, name: bytes) -> bool:
        """
        @return: whether this atom is C{name}, ignoring case.
        """
        return self.value.upper() == name.upper()


@attr.s(frozen=True, slots=True)
class String:
    """
    A quoted string or a literal: its contents.

    @ivar literal: whether it was sent as a literal.
    """

    value: bytes = attr.ib()
    literal: bool = attr.ib(default=False, eq=False)


@attr.s(frozen=True, slots=True)
class LiteralStream:
    """
    APPEND's message literal, streamed to the handler instead of collected.

    @ivar size: the octets announced.
    @ivar binary: whether it was a C{~{n}} literal8 (RFC 3516).
    """

    size: int = attr.ib()
    binary: bool = attr.ib(default=False)


Token = Union[Atom, String, LiteralStream, List["Token"]]


@attr.s(frozen=True, slots=True)
class Command:
    """
    One parsed command.
    """

    tag: bytes = attr.ib()
    verb: bytes = attr.ib()
    args: List[Token] = attr.ib(factory=list)


def astring(token: object) -> Optional[bytes]:
    """
    @return: the octets of an astring argument (an L{Atom} or a L{String}),
        or L{None} if C{token} is neither.
    """
    if isinstance(token, (Atom, String)):
        return token.value
    return None
