# -*- test-case-name: tests.test_message -*-
"""
Composing and decoding messages for the mail client.  No Twisted here.

Composition builds an L{email.message.EmailMessage} (RFC 5322 headers,
RFC 2047 encoded words for non-ASCII header text, RFC 2045 MIME with
quoted-printable or base64 bodies so that the result is 7-bit clean, and
RFC 2231 file names for attachments) and turns it into wire bytes (CRLF).

Decoding parses what a server hands back and picks what a person wants to
read: the plain text part (or a readable rendering of the HTML part when
there is no plain one), the main headers, and the attachments, with file
names made safe to write into a directory.
"""

import datetime
import email
import email.policy
import email.utils
import mimetypes
import os
import re
import unicodedata
from email.message import EmailMessage, Message
from html.parser import HTMLParser
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import attr

# RFC 5322 output with CRLF line endings; 7-bit so that no server needs
# 8BITMIME (RFC 6152): non-ASCII bodies become quoted-printable or base64.
COMPOSE_POLICY = email.policy.SMTP.clone(cte_type="7bit")
_PARSE_POLICY = email.policy.default

# The name we fall back to when an attachment has none we can use.
DEFAULT_ATTACHMENT_NAME = "attachment"
_MAX_NAME = 200


# --- composing -----------------------------------------------------------


@attr.s(frozen=True, auto_attribs=True)
class AttachmentFile:
    """
    A file to attach.

    @ivar filename: the name shown to the recipient (no directory part).
    @ivar data: the content.
    @ivar contentType: C{maintype/subtype}; guessed from the name if empty.
    """

    filename: str
    data: bytes
    contentType: str = ""

    @classmethod
    def fromPath(cls, path: str) -> "AttachmentFile":
        """Read a file (blocking: call it before the reactor runs)."""
        with open(path, "rb") as f:
            data = f.read()
        return cls(os.path.basename(path), data, guessContentType(path))


def guessContentType(filename: str) -> str:
    """
    @return: the MIME type of C{filename} by its extension, or
        C{application/octet-stream} (RFC 2046 §4.5.1) when unknown.
    """
    guessed, encoding = mimetypes.guess_type(filename, strict=False)
    if guessed is None or encoding is not None:
        # A .gz or .bz2 file is sent as what it is, not as what it contains.
        return "application/octet-stream"
    return guessed


def composeMessage(
    *,
    sender: str,
    to: Sequence[str],
    subject: str,
    body: str,
    cc: Sequence[str] = (),
    attachments: Sequence[AttachmentFile] = (),
    now: Optional[datetime.datetime] = None,
    messageIdDomain: Optional[str] = None,
) -> EmailMessage:
    """
    Build a message.  Bcc recipients are never passed here: they belong in
    the envelope only (RFC 5322 §3.6.3 allows either; hiding them is the
    point of Bcc).

    @param now: the Date (an aware datetime); the current local time if not
        given.
    @param messageIdDomain: the right-hand side of the Message-ID; the
        sender's domain if not given.
    @raise ValueError: a header value contains a line break.
    """
    for name, values in (("From", [sender]), ("To", to), ("Cc", cc), ("Subject", [subject])):
        for value in values:
            if "\r" in value or "\n" in value:
                # Header injection (a Bcc: smuggled in a Subject, say).
                raise ValueError("the %s may not contain line breaks" % (name,))
    message = EmailMessage(policy=COMPOSE_POLICY)
    # RFC 5322 §3.6: Date and From are required; Message-ID should be there.
    if now is None:
        now = datetime.datetime.now(datetime.timezone.utc).astimezone()
    message["Date"] = email.utils.format_datetime(now)
    message["From"] = sender
    if to:
        message["To"] = ", ".join(to)
    if cc:
        message["Cc"] = ", ".join(cc)
    message["Subject"] = subject
    domain = messageIdDomain or sender.rpartition("@")[2] or None
    message["Message-ID"] = email.utils.make_msgid(domain=domain)
    message["MIME-Version"] = "1.0"
    message.set_content(_normalizeNewlines(body))
    for attachment in attachments:
        maintype, _, subtype = (attachment.contentType or guessContentType(attachment.filename)).partition("/")
        # The data are bytes, so every attachment is base64-encoded: a text
        # file keeps its text/* type and its exact bytes (line endings and
        # character set untouched).
        message.add_attachment(
            attachment.data,
            maintype=maintype,
            subtype=subtype or "octet-stream",
            # The policy writes non-ASCII names as RFC 2231 parameters.
            filename=attachment.filename,
        )
    return message


def _normalizeNewlines(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text and not text.endswith("\n"):
        text += "\n"
    return text


def messageBytes(message: EmailMessage) -> bytes:
    """
    @return: the message as it goes on the wire: CRLF line endings, not
        dot-stuffed.
    """
    return message.as_bytes(policy=COMPOSE_POLICY)


def envelopeRecipients(*groups: Iterable[str]) -> List[str]:
    """
    @return: every address of the groups (To, Cc, Bcc) once, in order,
        compared case-insensitively.
    """
    seen: Set[str] = set()
    result = []
    for group in groups:
        for address in group:
            if address.lower() not in seen:
                seen.add(address.lower())
                result.append(address)
    return result


# --- decoding ------------------------------------------------------------


@attr.s(frozen=True, auto_attribs=True)
class Attachment:
    """
    An attachment found in a message.

    @ivar filename: the name as the sender gave it (decoded, unsafe).
    @ivar safeName: a name that is safe to create in a directory.
    """

    filename: str
    safeName: str
    contentType: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@attr.s(frozen=True, auto_attribs=True)
class DecodedMessage:
    """
    What a person reads of a message.

    @ivar headers: C{From}, C{To}, C{Cc}, C{Date}, C{Subject} (decoded, the
        ones present).
    @ivar text: the readable body.
    @ivar textFromHTML: whether C{text} was rendered from HTML.
    """

    headers: Dict[str, str]
    text: str
    textFromHTML: bool
    attachments: Tuple[Attachment, ...]

    def asJSON(self) -> dict:
        return {
            "headers": dict(self.headers),
            "text": self.text,
            "text_from_html": self.textFromHTML,
            "attachments": [
                {"filename": a.filename, "safe_name": a.safeName, "content_type": a.contentType, "size": a.size}
                for a in self.attachments
            ],
        }


DISPLAY_HEADERS = ("From", "To", "Cc", "Date", "Subject")


def parseMessage(data: bytes) -> Message:
    """Parse message bytes (CRLF or LF) leniently."""
    return email.message_from_bytes(data, policy=_PARSE_POLICY)


def headerText(message: Message, name: str) -> Optional[str]:
    """
    @return: a header decoded to text (RFC 2047 words decoded, folding
        removed), or L{None} when absent.  Malformed headers come back as
        best-effort text rather than raising.
    """
    try:
        value = message.get(name)
    except Exception:
        value = None
        for key, raw in message.raw_items():
            if key.lower() == name.lower():
                value = raw
                break
    if value is None:
        return None
    return _oneLine(str(value))


def _oneLine(text: str) -> str:
    # Never let a header smuggle terminal control sequences or new lines
    # into what we print.
    text = re.sub(r"\s*[\r\n]+\s*", " ", text)
    return "".join(c if c.isprintable() or c == "\t" else "\ufffd" for c in text).strip()


def decodeMessage(data: bytes) -> DecodedMessage:
    """
    Decode a whole message for reading.
    """
    message = parseMessage(data)
    headers = {}
    for name in DISPLAY_HEADERS:
        value = headerText(message, name)
        if value is not None:
            headers[name] = value

    body = _findBody(message)
    text = ""
    fromHTML = False
    if body is not None:
        content = partText(body)
        if body.get_content_subtype() == "html":
            text = htmlToText(content)
            fromHTML = True
        else:
            text = content

    attachments = []
    taken: Set[str] = set()
    for part in _leaves(message):
        if part is body:
            continue
        disposition = part.get_content_disposition()
        filename = _filename(part)
        forwarded = part.get_content_type() == "message/rfc822"
        if disposition == "attachment" or filename or forwarded or part.get_content_maintype() not in ("text", "message"):
            payload = _forwardedBytes(part) if forwarded else _payload(part)
            name = filename or ""
            safe = safeFilename(name or _defaultName(part), taken)
            taken.add(safe.lower())
            attachments.append(Attachment(name, safe, part.get_content_type(), payload))
    return DecodedMessage(headers, text, fromHTML, tuple(attachments))


def _leaves(message: Message) -> Iterable[Message]:
    """
    The parts that are not containers, in order.  A forwarded message
    (message/rfc822) is one leaf: an attachment, not more parts of ours.
    """
    if message.get_content_type() == "message/rfc822" or not message.is_multipart():
        yield message
        return
    for part in message.iter_parts():  # type: ignore[attr-defined]
        yield from _leaves(part)


def _forwardedBytes(part: Message) -> bytes:
    inner = part.get_payload()
    if isinstance(inner, list) and inner:
        inner = inner[0]
    if isinstance(inner, Message):
        return inner.as_bytes(policy=_PARSE_POLICY)
    return _payload(part)


def _findBody(message: Message) -> Optional[Message]:
    try:
        return message.get_body(preferencelist=("plain", "html"))  # type: ignore[attr-defined]
    except Exception:
        return None


def _filename(part: Message) -> str:
    try:
        name = part.get_filename()
    except Exception:
        name = None
    return name or ""


def _defaultName(part: Message) -> str:
    if part.get_content_type() == "message/rfc822":
        return "forwarded.eml"
    extension = mimetypes.guess_extension(part.get_content_type(), strict=False) or ".bin"
    return DEFAULT_ATTACHMENT_NAME + extension


def _payload(part: Message) -> bytes:
    """A leaf part's bytes, transfer encoding undone."""
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def partText(part: Message) -> str:
    """
    The text of a leaf part: transfer encoding (quoted-printable, base64)
    undone and the charset decoded.  Unknown or lying charsets do not
    stop us: undecodable bytes are replaced.
    """
    payload = _payload(part)
    charset = part.get_content_charset() or "us-ascii"
    for candidate in (charset, "utf-8"):
        try:
            return _normalizeNewlines(payload.decode(candidate)) if payload else ""
        except (LookupError, UnicodeDecodeError):
            continue
    return _normalizeNewlines(payload.decode("latin-1"))


class _TextExtractor(HTMLParser):
    """
    Renders HTML as plain text: blocks become lines, links keep their
    targets, scripts and styles vanish.
    """

    _BLOCKS = {
        "p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6",
        "blockquote", "pre", "table", "ul", "ol", "hr", "section", "article",
    }
    _SKIP = {"script", "style", "head", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: List[str] = []
        self._skipping = 0
        self._href: Optional[str] = None
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")
            if tag == "li":
                self.parts.append("* ")
            if tag == "pre":
                self._pre += 1
        elif tag == "a":
            self._href = dict(attrs).get("href")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCKS and tag != "li":
            self.parts.append("\n")
            if tag == "pre":
                self._pre = max(0, self._pre - 1)
        elif tag == "a" and self._href:
            if self._href.startswith(("http:", "https:", "mailto:")):
                self.parts.append(" <%s>" % (self._href,))
            self._href = None

    def handle_data(self, data: str) -> None:
        if self._skipping:
            return
        if not self._pre:
            data = re.sub(r"\s+", " ", data)
        self.parts.append(data)


def htmlToText(html: str) -> str:
    """
    @return: readable plain text for an HTML body.
    """
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    lines = [line.strip() for line in "".join(extractor.parts).splitlines()]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n")
    return text + "\n" if text else ""


# --- safe file names -----------------------------------------------------

_RESERVED_WINDOWS = {"con", "prn", "aux", "nul"} | {"com%d" % i for i in range(1, 10)} | {"lpt%d" % i for i in range(1, 10)}


def safeFilename(name: str, taken: Iterable[str] = ()) -> str:
    """
    Turn an attachment's file name, which the sender chose, into one that
    can only name a new file directly inside the target directory.

    Directory parts (C{/} and C{\\}) are stripped, C{.} and C{..} and
    hidden names are refused, control characters removed, the length
    bounded, and a name already in C{taken} (compared case-insensitively)
    gets a C{" (n)"} suffix.
    """
    name = unicodedata.normalize("NFC", name or "")
    name = name.replace("\\", "/").split("/")[-1]
    name = "".join(c for c in name if c.isprintable() and c not in '<>:"|?*')
    name = name.strip().lstrip(".").strip()
    if not name or name in (".", ".."):
        name = DEFAULT_ATTACHMENT_NAME
    stem, extension = os.path.splitext(name)
    if stem.lower() in _RESERVED_WINDOWS:
        stem = "_" + stem
    if len(extension) > 20:
        stem, extension = stem + extension, ""
    stem = stem[: _MAX_NAME - len(extension)]
    name = stem + extension
    takenLower = {t.lower() for t in taken}
    candidate = name
    counter = 1
    while candidate.lower() in takenLower:
        candidate = "%s (%d)%s" % (stem, counter, extension)
        counter += 1
    return candidate


# --- summaries for listing ----------------------------------------------


@attr.s(frozen=True, auto_attribs=True)
class Summary:
    """
    One line of a mailbox listing, from a message's headers.
    """

    number: int
    size: int
    sender: str
    subject: str
    date: str
    uid: Optional[str] = None

    def asJSON(self) -> dict:
        return {
            "number": self.number,
            "uid": self.uid,
            "from": self.sender,
            "subject": self.subject,
            "date": self.date,
            "size": self.size,
        }


def summarize(number: int, size: int, headerBytes: bytes, uid: Optional[str] = None) -> Summary:
    """
    @param headerBytes: the message's header section (what C{TOP n 0}
        answers), or the whole message.
    """
    message = parseMessage(headerBytes)
    return Summary(
        number=number,
        size=size,
        sender=headerText(message, "From") or "",
        subject=headerText(message, "Subject") or "",
        date=headerText(message, "Date") or "",
        uid=uid,
    )


# --- local mail files ----------------------------------------------------


def toUnixNewlines(data: bytes) -> bytes:
    """Local mail files (mbox, our Maildir copies) use LF line endings."""
    return data.replace(b"\r\n", b"\n")


_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)


def mboxEntry(data: bytes, envelopeSender: str, when: datetime.datetime) -> bytes:
    """
    One message in mboxrd format: a C{From_} separator line, the message
    with LF line endings and every C{>*From } line quoted with one more
    C{>} (reversible, unlike mboxo), and a blank line after it.
    """
    body = toUnixNewlines(data)
    if not body.endswith(b"\n"):
        body += b"\n"
    body = _FROM_LINE.sub(rb">\1", body)
    sender = envelopeSender or "MAILER-DAEMON"
    sender = re.sub(r"\s", "_", sender)
    separator = "From %s %s\n" % (sender, when.strftime("%a %b %e %H:%M:%S %Y"))
    return separator.encode("utf-8") + body + b"\n"


def envelopeSenderOf(data: bytes) -> str:
    """The C{Return-Path} the delivering server added, or C{""}."""
    message = parseMessage(data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0] + b"\n\n")
    value = headerText(message, "Return-Path") or ""
    return email.utils.parseaddr(value)[1]




# --- header sections, as the SMTP server checks them ---------------------

# RFC 5322 §3.6.8: a field name is printable ASCII except the colon; §4.5
# (obsolete syntax, obs-optional and the obs- forms of every field) allows
# white space between the name and the colon, so "From :" and "From\t:" are
# From fields too, and software downstream reads them as such.
FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")

#: Comments may nest (RFC 5322 §3.2.2), but no real address needs more
#: than a few levels; deeper nesting is refused rather than followed.
MAX_COMMENT_DEPTH = 16

FIELD, CONTINUATION, BLANK, OTHER = "field", "continuation", "blank", "other"


def classifyHeaderLine(line: bytes) -> Tuple[str, Optional[bytes]]:
    """
    What one line (with or without its line ending) is in a header section
    (RFC 5322 §2.2).

    @return: C{(kind, name)}: L{FIELD} and the field's name (as written,
        without white space), L{CONTINUATION} (folded: starts with white
        space), L{BLANK} (the end of the header section), or L{OTHER}: a
        line that is none of these, such as an mbox C{From } line or a
        body without a header section.
    """
    if line in (b"\r\n", b"\n", b""):
        return BLANK, None
    if line[:1] in (b" ", b"\t"):
        return CONTINUATION, None
    match = FIELD_NAME.match(line)
    if match is None:
        return OTHER, None
    return FIELD, match.group(1)


def fieldValue(field: bytes) -> str:
    """
    @param field: a whole header field, continuation lines included.
    @return: its value, unfolded (RFC 5322 §2.2.3), as text (UTF-8 is
        allowed by RFC 6532; bad bytes are replaced).
    """
    _, _, value = field.partition(b":")
    value = re.sub(rb"\r?\n(?=[ \t])", b"", value)
    return value.decode("utf-8", "replace").strip()


class AddressSyntaxError(ValueError):
    """An address list is nested too deeply to be taken apart safely."""


def _skipComment(value: str, i: int) -> int:
    """
    @param i: the index of a C{(} in C{value}.
    @return: the index after the matching C{)}, or C{-1} if there is none.
    @raise AddressSyntaxError: the comment nests too deeply.
    """
    depth, i, n = 1, i + 1, len(value)
    while i < n:
        char = value[i]
        if char == "\\":
            i += 1
        elif char == "(":
            depth += 1
            if depth > MAX_COMMENT_DEPTH:
                raise AddressSyntaxError("comments nested more than %d deep" % (MAX_COMMENT_DEPTH,))
        elif char == ")":
            depth -= 1
            if not depth:
                return i + 1
        i += 1
    return -1


def _skipQuoted(value: str, i: int, close: str) -> int:
    """
    @return: the index after the C{close} that ends the quoted string or
        domain literal opening at C{i}, or C{-1} if there is none.
    """
    i, n = i + 1, len(value)
    while i < n:
        if value[i] == "\\":
            i += 2
            continue
        if value[i] == close:
            return i + 1
        i += 1
    return -1


class _Mailbox:
    """One mailbox of an address list, as it is read."""

    def __init__(self) -> None:
        self.text: List[str] = []
        self.angle: List[str] = []
        self.angles = 0
        self.open = False
        self.trailing = False
        self.bad = False

    def add(self, piece: str) -> None:
        if self.open:
            self.angle.append(piece)
        elif self.angles:
            # After the angle address only white space may follow.
            self.trailing = self.trailing or bool(piece.strip())
        else:
            self.text.append(piece)

    def address(self) -> Optional[str]:
        """@return: the address; C{""} if unclear; L{None} if empty."""
        if self.bad or self.open or self.trailing or self.angles > 1:
            return ""
        address = "".join(("".join(self.angle) if self.angles else "".join(self.text)).split())
        if address.startswith("@"):
            # RFC 5322 §4.4 obs-route: <@relay:user@domain>
            address = address.partition(":")[2]
        return address.lower() if address or self.angles else None


def mailboxAddresses(value: str) -> List[str]:
    """
    The addresses of an RFC 5322 §3.4 address list (as in C{From:}),
    found in one pass without recursion: comments (nested at most
    L{MAX_COMMENT_DEPTH} deep) are dropped, quoted strings and domain
    literals are kept whole, groups are opened up, and each mailbox gives
    the address in its angle brackets, or its whole text if it has none.

    Anything that is not one clear address (two angle addresses in one
    mailbox, text after the angle address, an unterminated quote, comment
    or bracket, a group inside a group) gives C{""}, which matches no
    sender: the caller refuses rather than guesses.

    @return: the addresses, lower-cased, white space removed.
    @raise AddressSyntaxError: comments are nested too deeply.
    """
    addresses: List[str] = []
    mailbox = _Mailbox()
    inGroup = False

    def end() -> None:
        nonlocal mailbox
        address = mailbox.address()
        if address is not None:
            addresses.append(address)
        mailbox = _Mailbox()

    i, n = 0, len(value)
    while i < n:
        char = value[i]
        if char == "(":
            after = _skipComment(value, i)
            if after < 0:
                mailbox.bad = True
                break
            mailbox.add(" ")
            i = after
            continue
        if char in "\"[":
            after = _skipQuoted(value, i, '"' if char == '"' else "]")
            if after < 0:
                mailbox.bad = True
                break
            mailbox.add(value[i:after])
            i = after
            continue
        if char == "<" and not mailbox.open:
            mailbox.angles += 1
            mailbox.open = True
        elif char == ">" and mailbox.open:
            mailbox.open = False
        elif char == ">":
            mailbox.bad = True
        elif mailbox.open:
            # A source route's "," and ":" belong to the angle address.
            mailbox.add(char)
        elif char == ",":
            end()
        elif char == ":":
            # What came before was a group's display name, not a mailbox.
            if inGroup or mailbox.angles:
                mailbox.bad = True
            inGroup = True
            mailbox.text.clear()
        elif char == ";" and inGroup:
            end()
            inGroup = False
        else:
            mailbox.add(char)
        i += 1
    end()
    return addresses
