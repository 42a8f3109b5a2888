# -*- test-case-name: tests.test_escape -*-
"""
Tests for L{mailnet.escape}: network text made safe for logs and terminals.
"""

from twisted.trial.unittest import SynchronousTestCase

from mailnet.escape import asciiEscape, escape


class EscapeTests(SynchronousTestCase):
    def test_printableUnchanged(self) -> None:
        for text in ("250 2.0.0 Ok", "caf\u00e9 \u65e5\u672c", "emoji \U0001f600", "tab-free; (parens) [IPv6:::1]"):
            self.assertEqual(escape(text), text)

    def test_controls(self) -> None:
        """C0, DEL and C1 controls, as terminals obey them (ESC, BEL, CR, CSI)."""
        self.assertEqual(escape("\x1b]0;title\x07\x1b[2J\r\n\x00\x7f\x9b"), "\\x1b]0;title\\x07\\x1b[2J\\x0d\\x0a\\x00\\x7f\\x9b")

    def test_directionAndSeparators(self) -> None:
        self.assertEqual(escape("a\u202eb\u2066c\u2028d\ufeff"), "a\\u202eb\\u2066c\\u2028d\\ufeff")

    def test_idempotent(self) -> None:
        """Text escaped once (kept in the queue) is shown the same way again."""
        once = escape("451 \x1b[2J\r\u202e caf\u00e9")
        self.assertEqual(escape(once), once)

    def test_bytes(self) -> None:
        self.assertEqual(escape(b"ok \xff\xc3\xa9 \x1b"), "ok \\xff\u00e9 \\x1b")

    def test_limit(self) -> None:
        self.assertEqual(escape("abcdef", 3), "abc...")
        self.assertEqual(escape("abc", 3), "abc")

    def test_ascii(self) -> None:
        self.assertEqual(asciiEscape("550 caf\u00e9 \x1b \U0001f600"), "550 caf\\u00e9 \\x1b \\U0001f600")
