# -*- test-case-name: tests.test_eightbit -*-
"""
Making an 8-bit message 7-bit, for a next hop without 8BITMIME (RFC 6152
§3: such a message must not be sent to it as it is) and before DKIM
signing (RFC 6376 §5.3: a signature over 8-bit content breaks when a relay
converts it later).

Each MIME leaf with octets above 127 is re-encoded: text as
quoted-printable, anything else as base64 (RFC 2045 §6), and its
C{Content-Transfer-Encoding} field says so.  Multiparts are walked part by
part (the boundaries and every other octet stay as they are);
C{message/rfc822} parts are converted as messages.  What cannot be
converted raises L{CannotConvert} (the relay then bounces with
C{5.6.3}, RFC 3463 "conversion required but not supported"):

  - 8-bit octets in a header section (RFC 6532 headers need SMTPUTF8,
    not a conversion);
  - 8-bit octets in a multipart's preamble or epilogue, or a multipart
    without a usable boundary;
  - other C{message/*} types (C{message/global} stays 8-bit by
    definition, RFC 6532 §3.5), and parts already labelled
    quoted-printable or base64 that still hold 8-bit octets (broken);
  - nesting deeper than L{MAX_DEPTH}.

Pure functions on bytes (CRLF line ends), no Twisted.
"""

import base64
import email.parser
import email.policy
import quopri
import re
from typing import Tuple

MAX_DEPTH = 20


class CannotConvert(Exception):
    """The message cannot be made 7-bit without changing its meaning."""


def _split(entity: bytes) -> Tuple[bytes, bytes]:
    """The header section (ending with its CRLF; empty if none) and the content after the blank line."""
    if entity.startswith(b"\r\n"):
        return b"", entity[2:]
    end = entity.find(b"\r\n\r\n")
    if end < 0:
        return (entity if entity.endswith(b"\r\n") else entity + b"\r\n"), b""
    return entity[: end + 2], entity[end + 4 :]


def _fields(headers: bytes) -> Tuple[str, str, str]:
    """The content type (lower-case), its boundary, and the transfer encoding."""
    message = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(headers + b"\r\n")
    ctype = message.get_content_type() if message.get("Content-Type") is not None else ""
    boundary = message.get_boundary() or ""
    cte = str(message.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    return ctype, boundary, cte


_CTE_FIELD = re.compile(rb"(?im)^content-transfer-encoding[ \t]*:.*(?:\r\n[ \t].*)*\r\n")


def _withEncoding(headers: bytes, encoding: bytes) -> bytes:
    """The header section with one C{Content-Transfer-Encoding: encoding} field."""
    return _CTE_FIELD.sub(b"", headers) + b"Content-Transfer-Encoding: " + encoding + b"\r\n"


def _quotedPrintable(content: bytes) -> bytes:
    """RFC 2045 §6.7, line by line, CRLF kept as the line end."""
    lines = content.split(b"\r\n")
    encoded = [quopri.encodestring(line, quotetabs=False).replace(b"\n", b"\r\n") for line in lines]
    # encodestring adds no newline to a line without one, but may end a
    # line with a soft break; a trailing "=\r\n" before our CRLF is fine.
    return b"\r\n".join(e[:-2] if e.endswith(b"\r\n") and not e.endswith(b"=\r\n") else e for e in encoded)


def _base64(content: bytes, trailingCRLF: bool) -> bytes:
    encoded = base64.encodebytes(content).replace(b"\n", b"\r\n")
    return encoded if trailingCRLF else encoded[:-2]


def _entity(entity: bytes, defaultType: str, depth: int, top: bool) -> bytes:
    if entity.isascii():
        return entity
    if depth > MAX_DEPTH:
        raise CannotConvert("MIME structure nested too deeply")
    headers, content = _split(entity)
    if not headers.isascii():
        raise CannotConvert("8-bit octets in a header section")
    ctype, boundary, cte = _fields(headers)
    ctype = ctype or defaultType
    main = ctype.split("/", 1)[0]
    if main == "multipart":
        if not boundary:
            raise CannotConvert("a multipart without a boundary")
        converted = _multipart(content, boundary, "message/rfc822" if ctype == "multipart/digest" else "text/plain", depth)
        if cte in ("8bit", "binary"):
            headers = _withEncoding(headers, b"7bit")
        return headers + b"\r\n" + converted
    if ctype == "message/rfc822":
        converted = _entity(content, "text/plain", depth + 1, True)
        if cte in ("8bit", "binary"):
            headers = _withEncoding(headers, b"7bit")
        return headers + b"\r\n" + converted
    if main == "message":
        raise CannotConvert("a %s part with 8-bit content" % (ctype,))
    if cte not in ("7bit", "8bit", "binary"):
        raise CannotConvert("8-bit octets in a part labelled %s" % (cte[:40],))
    if top and b"content-type" not in headers.lower():
        # A plain 8-bit message without MIME fields: say what it is.
        try:
            content.decode("utf-8")
            charset = b"utf-8"
        except UnicodeDecodeError:
            charset = b"unknown-8bit"  # RFC 1428
        if not re.search(rb"(?im)^mime-version[ \t]*:", headers):
            headers += b"MIME-Version: 1.0\r\n"
        headers += b"Content-Type: text/plain; charset=" + charset + b"\r\n"
        main = "text"
    if main == "text":
        return _withEncoding(headers, b"quoted-printable") + b"\r\n" + _quotedPrintable(content)
    return _withEncoding(headers, b"base64") + b"\r\n" + _base64(content, top or content.endswith(b"\r\n"))


def _multipart(content: bytes, boundary: str, defaultType: str, depth: int) -> bytes:
    """RFC 2046 §5.1.1: convert each body part between the delimiter lines."""
    delimiter = re.compile(rb"(?:^|\r\n)--" + re.escape(boundary.encode("ascii", "replace")) + rb"(--)?[ \t]*(?:\r\n|$)")
    matches = list(delimiter.finditer(content))
    if not matches:
        raise CannotConvert("a multipart whose boundary never occurs")
    preamble = content[: matches[0].start()]
    epilogue = b""
    out = [preamble]
    for index, match in enumerate(matches):
        out.append(match.group(0))
        if match.group(1):  # the close delimiter: the epilogue follows
            epilogue = content[match.end() :]
            out.append(epilogue)
            break
        end = matches[index + 1].start() if index + 1 < len(matches) else len(content)
        out.append(_entity(content[match.end() : end], defaultType, depth + 1, False))
    if not (preamble.isascii() and epilogue.isascii()):
        raise CannotConvert("8-bit octets outside the body parts of a multipart")
    return b"".join(out)


def toSevenBit(message: bytes) -> bytes:
    """
    @param message: a message with CRLF line ends.
    @return: it with every 8-bit MIME leaf re-encoded (unchanged if it is
        all ASCII).
    @raise CannotConvert: see the module docstring.
    """
    return _entity(message, "text/plain", 0, True)
