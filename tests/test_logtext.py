"""
Tests for L{mailnet.logtext}: the same log lines as Twisted's text
observer, faster.
"""

import io

from twisted.logger import FileLogObserver, Logger, LogLevel, LogPublisher, jsonFileLogObserver, textFileLogObserver
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mailnet import logtext


class _Thing:
    def __str__(self) -> str:
        return "a thing"

    def __format__(self, spec: str) -> str:
        return "formatted thing"

    def method(self) -> str:
        return "called"


def _events():
    """Events of every shape a log sees, Twisted's awkward ones included."""
    base = {"log_time": 1765000000.25, "log_level": LogLevel.info, "log_namespace": "mailnet.smtp.server"}
    yield dict(base, log_format="SMTP accepted message {id} ({localId}) from <{sender}>, {size} octets", id="1.M2.h", localId="AB", sender="a@b.test", size=2048)
    yield dict(base, log_format="plain text, no fields")
    yield dict(base, log_format="two\nlines {x}", x="and\nthree")
    yield dict(base, log_format="{x!r} and {y:>6}", x="repr", y=12)
    yield dict(base, log_format="{thing} {thing.method()} {d[k]}", thing=_Thing(), d={"k": "v"})
    yield dict(base, log_format="{missing} field")
    yield dict(base, log_format="{} positional")
    yield dict(base, log_format="unbalanced {")
    yield dict(base, log_format="braces {{literal}} {x}", x=1)
    yield dict(base, log_format="")
    yield dict(base, log_format=b"bytes {x}", x=1)
    yield dict(base, log_format="{log_text}", log_text="from a worker", log_system="worker-1")
    yield dict(base, log_format="system {x}", x=1, log_system=42)
    yield dict(base, log_format="no level")
    yield {"log_format": "no time, no namespace", "log_level": LogLevel.warn}
    yield dict(base, log_time=1765000000, log_format="an int time")
    yield dict(base, log_time=-1.5, log_format="before 1970")
    yield dict(base, log_format="utf-8 \u00e9 {x}", x="\u2603")
    yield dict(base, log_format="number {x} {y} {z}", x=1.5, y=None, z=True)
    yield {"log_time": 1765000000.0}
    yield dict(base, log_format="flattened {x}", x=1, log_flattened={"x!:": "1"})
    yield dict(base, log_format="failed {x}", x=1, log_failure=Failure(ZeroDivisionError("division by zero")))
    noLevel = dict(base, log_format="no level at all")
    del noLevel["log_level"]
    yield noLevel


class FormatTests(SynchronousTestCase):
    """The text is Twisted's, character for character."""

    def assertSameAsTwisted(self, event) -> None:
        theirs, ours = io.StringIO(), io.StringIO()
        textFileLogObserver(theirs)(dict(event))
        logtext.textFileLogObserver(ours)(dict(event))
        self.assertEqual(ours.getvalue(), theirs.getvalue())

    def test_everyShape(self) -> None:
        for event in _events():
            self.assertSameAsTwisted(event)

    def test_messageAlone(self) -> None:
        """L{logtext.formatEvent} is L{twisted.logger.formatEvent}, for every shape of event."""
        from twisted.logger import formatEvent

        for event in _events():
            self.assertEqual(logtext.formatEvent(dict(event)), formatEvent(dict(event)))

    def test_timeWithinASecond(self) -> None:
        """The cached time stamp is right for each second, in any order."""
        for when in (1765000000.0, 1765000000.999, 1765000001.0, 1765000000.5, 1000.2, 1765000001.75):
            self.assertSameAsTwisted({"log_time": when, "log_format": "t", "log_level": LogLevel.info, "log_namespace": "n"})

    def test_throughALogger(self) -> None:
        """Events made by a L{Logger} come out as Twisted writes them."""
        theirs, ours = io.StringIO(), io.StringIO()
        publisher = LogPublisher(textFileLogObserver(theirs), logtext.textFileLogObserver(ours))
        log = Logger(namespace="mailnet.test", observer=publisher)
        log.info("SMTP {peer}: {code} {text}", peer="192.0.2.1", code=550, text="no such user")
        log.warn("a warning with {n} fields", n=1)
        log.failure("it broke", Failure(ValueError("boom")))
        self.assertEqual(ours.getvalue(), theirs.getvalue())
        self.assertIn("SMTP 192.0.2.1: 550 no such user", ours.getvalue())

    def test_templatesBounded(self) -> None:
        """Many different formats do not grow the cache without end."""
        for i in range(logtext._MAX_TEMPLATES + 10):
            logtext._template("format %d {x}" % (i,))
        self.assertLessEqual(len(logtext._templates), logtext._MAX_TEMPLATES)


class SpeedUpTests(SynchronousTestCase):
    def test_switchesTwistedTextObservers(self) -> None:
        """
        Twisted's text observers (as twistd makes them) get the faster
        formatting; an observer with another time format, a JSON observer
        and a plain function are left alone.
        """
        out = io.StringIO()
        text = textFileLogObserver(out)
        otherTime = textFileLogObserver(io.StringIO(), timeFormat="%H:%M")
        otherFormat = otherTime.formatEvent
        json = jsonFileLogObserver(io.StringIO())
        jsonFormat = json.formatEvent
        seen = []
        publisher = LogPublisher(text, otherTime, json, seen.append)
        self.assertEqual(logtext.speedUp(publisher), 1)
        self.assertIs(text.formatEvent, logtext.formatEventAsText)
        self.assertIs(otherTime.formatEvent, otherFormat)
        self.assertIs(json.formatEvent, jsonFormat)
        Logger(namespace="n", observer=publisher).info("hello {who}", who="you")
        self.assertRegex(out.getvalue(), r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[n#info\] hello you\n$")
        self.assertEqual(len(seen), 1)

    def test_notAPublisher(self) -> None:
        """Something without observers: nothing to do."""
        self.assertEqual(logtext.speedUp(object()), 0)

    def test_observerType(self) -> None:
        self.assertIsInstance(logtext.textFileLogObserver(io.StringIO()), FileLogObserver)


class FastPathTests(SynchronousTestCase):
    def test_simpleFieldsSkipTwisted(self) -> None:
        """A line with plain fields is formatted without Twisted's formatter."""
        self.patch(logtext, "_slow", lambda event: self.fail("slow path for %r" % (event,)))
        out = io.StringIO()
        Logger(namespace="n", observer=logtext.textFileLogObserver(out)).info("a {b} c", b=1)
        self.assertTrue(out.getvalue().endswith(" [n#info] a 1 c\n"))
