# -*- test-case-name: tests.test_escape -*-
"""
Making text from the network safe to log or show on a terminal.

A remote server's reply, a client's EHLO argument or an envelope address
can carry ESC, BEL, CR, C1 controls (U+0080..U+009F, which some terminals
obey as well) or Unicode direction overrides: written raw to a log or a
terminal they set window titles, clear screens, hide text or forge log
lines.  L{escape} writes every such character as a visible escape
(C{\\x1b}, C{\\u202e}) and keeps printable text, UTF-8 included, as it is.
No Twisted here.
"""

import re
from typing import Optional, Union

# C0 and C1 controls, DEL, the line and paragraph separators, the
# bidirectional embedding, override and isolate controls, and lone
# surrogates (what undecodable bytes become with "surrogateescape").
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff\ufeff]")


def _visible(match: "re.Match[str]") -> str:
    char = match.group()
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        return "\\x%02x" % (code - 0xDC00,)  # an undecodable byte
    if code < 0x100:
        return "\\x%02x" % (code,)
    return "\\u%04x" % (code,)


def escape(text: Union[str, bytes], limit: Optional[int] = None) -> str:
    """
    @param text: text from the network; L{bytes} are decoded as UTF-8, and
        undecodable bytes shown as C{\\xNN}.
    @param limit: if given, at most this many characters of C{text} are
        kept (before escaping), and C{...} marks the cut.
    @return: C{text} with every control, separator or direction-changing
        character written as a backslash escape.  Backslashes are left as
        they are, so that text escaped once (a remote reply kept in the
        queue) looks the same when it is shown again: C{escape} is
        idempotent.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    cut = limit is not None and len(text) > limit
    if cut:
        text = text[:limit]
    text = _UNSAFE.sub(_visible, text)
    return text + "..." if cut else text


def asciiEscape(text: str) -> str:
    """
    @return: C{text} as printable ASCII: L{escape}, and any other non-ASCII
        character as C{\\uXXXX} (for RFC 3464 C{Diagnostic-Code} fields,
        which are ASCII text).
    """
    escaped = escape(text)
    if escaped.isascii():
        return escaped
    return "".join(c if c.isascii() else ("\\u%04x" % (ord(c),) if ord(c) < 0x10000 else "\\U%08x" % (ord(c),)) for c in escaped)
