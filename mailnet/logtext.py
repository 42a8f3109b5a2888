# -*- test-case-name: tests.test_logtext -*-
"""
The server's text log, written faster: the same lines as Twisted's
L{twisted.logger.textFileLogObserver}, byte for byte, at a fraction of the
reactor thread's time.

A busy SMTP listener logs a line per message; Twisted formats each one
through L{string.Formatter} (a Python-level parse of the format string and
a lookup per field) and a fresh C{strftime} of the time.  Here the format
string is parsed once and kept, simple C{{name}} fields are looked up
directly (C{format(value, "")}, as L{string.Formatter} does), and the
time stamp is formatted once a second.  Anything else (a field with a
conversion, a format spec, an attribute or a call; a traceback; a
pre-flattened event; a field that is missing) goes through Twisted's own
formatting, so the output never differs.

L{speedUp} switches the text observers that C{twistd} installed (its
C{--logfile}, or standard output) over to this formatting, leaving any
other observer (syslog, a custom C{--logger}) alone.
"""

import string
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.logger import FileLogObserver, formatEventAsClassicLogText, formatTime, timeFormatRFC3339
from twisted.logger import formatEvent as twistedFormatEvent

#: Parsed format strings: literal text and field names, or L{None} where
#: the format needs Twisted's formatting.  Bounded: the formats are the
#: program's own, but a program may make many.
_templates: Dict[str, Optional[Tuple[Tuple[str, Optional[str]], ...]]] = {}
_MAX_TEMPLATES = 4096

_parser = string.Formatter()

# The time stamp of the last second formatted.
_lastTime: List[Any] = [None, ""]


def _template(logFormat: str) -> Optional[Tuple[Tuple[str, Optional[str]], ...]]:
    try:
        return _templates[logFormat]
    except KeyError:
        pass
    parts: Optional[List[Tuple[str, Optional[str]]]] = []
    try:
        for literal, field, spec, conversion in _parser.parse(logFormat):
            if field is not None and (spec or conversion or not field.isidentifier()):
                parts = None
                break
            assert parts is not None
            parts.append((literal, field))
    except ValueError:
        parts = None
    result = tuple(parts) if parts is not None else None
    if len(_templates) >= _MAX_TEMPLATES:
        _templates.clear()
    _templates[logFormat] = result
    return result


def _stamp(when: float) -> str:
    """L{formatTime} with the RFC 3339 format, computed once per second."""
    if when < 0:
        return formatTime(when, timeFormatRFC3339)
    second = int(when)
    if _lastTime[0] != second:
        # Everything in the format is whole seconds: any time within the
        # second gives the same text.
        _lastTime[0], _lastTime[1] = second, formatTime(second, timeFormatRFC3339)
    return _lastTime[1]


def _slow(event: Dict[str, Any]) -> Optional[str]:
    return formatEventAsClassicLogText(event, formatTime=lambda when: formatTime(when, timeFormatRFC3339))


def _quickText(event: Dict[str, Any]) -> Optional[str]:
    """
    The event's message, where plain C{{name}} fields make it quick;
    L{None} where Twisted's formatting is needed.
    """
    logFormat = event.get("log_format")
    if type(logFormat) is not str or "log_flattened" in event:
        return None
    parts = _template(logFormat)
    if parts is None:
        return None
    pieces = []
    try:
        for literal, field in parts:
            pieces.append(literal)
            if field is not None:
                pieces.append(format(event[field], ""))
    except Exception:
        # Missing or unformattable: Twisted says so in its own words.
        return None
    return "".join(pieces)


def formatEvent(event: Dict[str, Any]) -> str:
    """
    L{twisted.logger.formatEvent}: the event's message alone, the same
    text, faster (for a worker process's log lines, see
    L{mailnet.workers.WorkerLogObserver}).
    """
    text = _quickText(event)
    return text if text is not None else twistedFormatEvent(event)


def formatEventAsText(event: Dict[str, Any]) -> Optional[str]:
    """
    L{formatEventAsClassicLogText} with the RFC 3339 time format, as
    L{twisted.logger.textFileLogObserver} writes it: the same text, or
    L{None} for an event with nothing to show.
    """
    if "log_failure" in event:
        return _slow(event)
    text = _quickText(event)
    if text is None:
        return _slow(event)
    if not text:
        return None
    system = event.get("log_system")
    if system is None:
        level = event.get("log_level")
        namespace = event.get("log_namespace", "-")
        levelName = getattr(level, "name", None) if level is not None else "-"
        if type(levelName) is not str or type(namespace) is not str:
            return _slow(event)
        system = namespace + "#" + levelName
    elif type(system) is not str:
        return _slow(event)
    when = event.get("log_time")
    if type(when) is not float:
        return _slow(event)
    return "%s [%s] %s\n" % (_stamp(when), system, text.replace("\n", "\n\t"))


def textFileLogObserver(outFile: Any) -> FileLogObserver:
    """L{twisted.logger.textFileLogObserver}, with the faster formatting."""
    return FileLogObserver(outFile, formatEventAsText)


def _isTwistedText(observer: object) -> bool:
    """Is C{observer} what C{textFileLogObserver(f)} made, with the default time format?"""
    if type(observer) is not FileLogObserver:
        return False
    formatter: Callable[..., Any] = getattr(observer, "formatEvent", None)  # type: ignore[assignment]
    if getattr(formatter, "__qualname__", "") != "textFileLogObserver.<locals>.formatEvent":
        return False
    cells = getattr(formatter, "__closure__", None) or ()
    return [c.cell_contents for c in cells] == [timeFormatRFC3339]


def speedUp(publisher: Any) -> int:
    """
    Give the faster formatting to each of C{publisher}'s observers that is
    Twisted's text file observer with its default time format.

    @return: how many were switched.
    """
    switched = 0
    for observer in list(getattr(publisher, "_observers", ())):
        if _isTwistedText(observer):
            observer.formatEvent = formatEventAsText
            switched += 1
    return switched
