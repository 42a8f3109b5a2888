# -*- test-case-name: tests.test_mime -*-
"""
The structure of a stored message, found in one streaming pass: where each
MIME part's header and body start and end (in the stored form, LF line
endings, and in the wire form, CRLF), the fields IMAP's ENVELOPE and
BODYSTRUCTURE report, and the top-level header block.  No Twisted here.

A L{ParsedMessage} is what the folder index caches per message (see
L{mailnet.interfaces.IFolder.parsed}): FETCH ENVELOPE, BODYSTRUCTURE,
BODY[HEADER...], and SEARCH on headers need nothing else, and a FETCH of a
section or a partial range reads only the octets it sends.

Parsing is bounded (part count, nesting depth, header size); a message
beyond the bounds is described as far as the bounds go and the rest is one
opaque part, never an exception.
"""

from typing import BinaryIO, Optional, Tuple

import attr

#: Bounds of the parse.
MAX_PARTS = 1000
MAX_DEPTH = 50
#: Header octets kept per part (the top-level one is kept whole up to this).
MAX_HEADER = 256 * 1024

Params = Tuple[Tuple[str, str], ...]


@attr.s(frozen=True, auto_attribs=True)
class Envelope:
    """
    RFC 9051 §7.5.2 ENVELOPE fields: each the raw (unfolded) header value
    as it appears in the message, or L{None} when absent.  Address lists
    are rendered by L{mailnet.imap._render}.
    """

    date: Optional[bytes] = None
    subject: Optional[bytes] = None
    from_: Optional[bytes] = None
    sender: Optional[bytes] = None
    replyTo: Optional[bytes] = None
    to: Optional[bytes] = None
    cc: Optional[bytes] = None
    bcc: Optional[bytes] = None
    inReplyTo: Optional[bytes] = None
    messageId: Optional[bytes] = None


@attr.s(frozen=True, auto_attribs=True)
class Part:
    """
    One MIME part (the whole message is the root part).

    Offsets count from the start of the message.  C{stored*} offsets are in
    the stored form (LF line endings), C{wire*} ones in the wire form
    (CRLF), so a section is read from the file as
    C{[storedBodyStart, storedEnd)} and sent, LFs turned into CRLFs, as
    exactly C{wireEnd - wireBodyStart} octets.

    @ivar type: the media type, lower case (C{"text"}).
    @ivar subtype: lower case (C{"plain"}).
    @ivar params: Content-Type parameters in order; names lower case,
        values exactly as given (case kept, quotes removed).
    @ivar lines: the body's line count (reported for text/* and
        message/rfc822).
    @ivar parts: the children of a multipart.
    @ivar message: for message/rfc822 (and message/global), the enclosed
        message's envelope and root part.
    """

    storedHeaderStart: int
    storedBodyStart: int
    storedEnd: int
    wireHeaderStart: int
    wireBodyStart: int
    wireEnd: int
    type: str = "text"
    subtype: str = "plain"
    params: Params = ()
    id: Optional[str] = None
    description: Optional[str] = None
    encoding: Optional[str] = None
    md5: Optional[str] = None
    disposition: Optional[Tuple[str, Params]] = None
    language: Optional[Tuple[str, ...]] = None
    location: Optional[str] = None
    lines: int = 0
    parts: Tuple["Part", ...] = ()
    message: Optional["ParsedMessage"] = None


@attr.s(frozen=True, auto_attribs=True)
class ParsedMessage:
    """
    A message's structure.

    @ivar header: the top-level header block in wire form (CRLF line
        endings, the empty line that ends it included).
    @ivar envelope: the top-level ENVELOPE fields.
    @ivar root: the root part.
    """

    header: bytes
    envelope: Envelope
    root: Part

    def toBytes(self) -> bytes:
        """A compact serialisation, for the index cache."""
        raise NotImplementedError

    @classmethod
    def fromBytes(cls, data: bytes) -> "ParsedMessage":
        """The inverse of L{toBytes}.  @raise ValueError: not one of ours."""
        raise NotImplementedError


def parseMessage(stored: BinaryIO) -> ParsedMessage:
    """
    Parse a message in stored form (LF line endings; a CRLF is taken as
    one line ending too) from a binary file, reading it once in chunks:
    memory stays bounded whatever the message's size.
    """
    raise NotImplementedError
