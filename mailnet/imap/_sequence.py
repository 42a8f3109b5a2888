# -*- test-case-name: tests.test_imap_parser -*-
"""
Sequence sets (RFC 9051 §9, C{sequence-set}): C{1:5,7,10:*}, for message
sequence numbers and UIDs alike.  Pure code, bounded.
"""

import bisect
from typing import Iterator, List, Optional, Sequence, Tuple

import attr

#: Ranges in one set.  Longer sets are refused (a command line could not
#: hold many more anyway).
MAX_RANGES = 20000

#: The largest number (RFC 9051 §9: nz-number fits 32 bits).
MAX_NUMBER = 2**32 - 1


class SequenceError(ValueError):
    """
    Not a valid sequence set; C{str(error)} is the text for BAD.
    """


@attr.s(frozen=True, slots=True)
class SequenceSet:
    """
    A parsed sequence set.

    @ivar ranges: C{(low, high)} pairs as given (either may be L{None} for
        C{*}); C{5:2} is the same as C{2:5}.
    """

    ranges: Tuple[Tuple[Optional[int], Optional[int]], ...] = attr.ib()

    def resolved(self, star: int) -> List[Tuple[int, int]]:
        """
        @param star: what C{*} stands for (the largest number in use; 0 if
            none).
        @return: the ranges with C{*} replaced, ordered, merged.
        """
        out: List[Tuple[int, int]] = []
        for low, high in self.ranges:
            a = star if low is None else low
            b = star if high is None else high
            if a > b:
                a, b = b, a
            out.append((a, b))
        out.sort()
        merged: List[Tuple[int, int]] = []
        for a, b in out:
            if merged and a <= merged[-1][1] + 1:
                if b > merged[-1][1]:
                    merged[-1] = (merged[-1][0], b)
            else:
                merged.append((a, b))
        return merged

    def contains(self, n: int, star: int) -> bool:
        """
        @return: whether C{n} is in the set, C{*} standing for C{star}.
        """
        for low, high in self.ranges:
            a = star if low is None else low
            b = star if high is None else high
            if a > b:
                a, b = b, a
            if a <= n <= b:
                return True
        return False

    def iterate(self, maxValue: int) -> Iterator[int]:
        """
        @return: the numbers in the set from 1 to C{maxValue} (which C{*}
            stands for), ascending, each once.
        """
        for a, b in self.resolved(maxValue):
            yield from range(max(a, 1), min(b, maxValue) + 1)

    def select(self, values: Sequence[int], star: Optional[int] = None) -> List[int]:
        """
        @param values: ascending numbers (e.g. a folder's UIDs).
        @param star: what C{*} stands for; the last of C{values} by default.
        @return: those of C{values} in the set, ascending; the cost depends
            on the ranges and the values selected, not on gaps.
        """
        if not values:
            return []
        if star is None:
            star = values[-1]
        out: List[int] = []
        for a, b in self.resolved(star):
            i = bisect.bisect_left(values, a)
            j = bisect.bisect_right(values, b)
            out.extend(values[i:j])
        return out


def _number(text: bytes) -> Optional[int]:
    if text == b"*":
        return None
    if not text.isdigit() or text.startswith(b"0") or len(text) > 10:
        raise SequenceError("Invalid number in sequence set")
    value = int(text)
    if value > MAX_NUMBER:
        raise SequenceError("Number too large in sequence set")
    return value


def parseSequenceSet(text: bytes) -> SequenceSet:
    """
    @raise SequenceError: not a sequence set, or more than L{MAX_RANGES}
        ranges.
    """
    if not text:
        raise SequenceError("Empty sequence set")
    if text.count(b",") >= MAX_RANGES:
        raise SequenceError("Sequence set too long")
    ranges = []
    for item in text.split(b","):
        low, colon, high = item.partition(b":")
        first = _number(low)
        ranges.append((first, _number(high) if colon else first))
    return SequenceSet(tuple(ranges))
