# -*- test-case-name: tests.test_benchmarks -*-
"""
The targets from the issue, and the table that puts each measured figure
beside its target.
"""

from typing import Any, Callable, Dict, List, Optional

import attr

MB = 1000 * 1000

#: Twisted's stock classes on the issue author's 2-core machine (msgs/s at
#: 1, 10 and 50 connections, 2 KB messages).
STOCK_ISSUE = {1: 496, 10: 1070, 50: 1334}


@attr.s(auto_attribs=True)
class Row:
    """
    One line of the table.

    @ivar met: L{True}/L{False} against C{target}; L{None} when there is no
        target, or the run was too short to judge.
    """

    name: str
    value: Optional[float]
    unit: str
    target: str = ""
    met: Optional[bool] = None

    def asDict(self) -> Dict[str, Any]:
        return attr.asdict(self)


def _get(cases: Dict[str, Any], name: str, key: str) -> Optional[float]:
    case = cases.get(name)
    if not case or case.get(key) is None:
        return None
    return case[key]


def buildRows(results: Dict[str, Any]) -> List[Row]:
    """The table for a finished run (see L{mailnetbench.driver})."""
    cases = results["cases"]
    judge = results["mode"] == "full"
    rows: List[Row] = []

    partial = bool(results.get("only"))

    def add(name: str, value: Optional[float], unit: str, target: str = "", test: Optional[Callable[[float], bool]] = None) -> None:
        if partial and value is None:
            return  # a case left out with --only
        met = None
        if test is not None and value is not None and judge:
            met = bool(test(value))
        rows.append(Row(name, value, unit, target, met))

    for conns in (1, 10, 50):
        name = "smtp-2k-c%d" % (conns,)
        rate = _get(cases, name, "msgs_per_s")
        stock = _get(cases, "stock-2k-c%d" % (conns,), "msgs_per_s")
        floor = 1300 if conns == 50 else STOCK_ISSUE[conns]
        add("SMTP 2 KB, %d conn: msgs/s" % (conns,), rate, "msg/s", ">= %d" % (floor,), lambda v, f=floor: v >= f)
        if stock:
            add("  Twisted stock here, %d conn" % (conns,), stock, "msg/s", "(issue: %d)" % (STOCK_ISSUE[conns],))
            add(
                "  mailnet / stock here",
                rate / stock if rate is not None else None,
                "x",
                ">= 1.00",
                lambda v: v >= 1.0,
            )
        add("  p50 latency", _get(cases, name, "p50_ms"), "ms")
        add("  p99 latency", _get(cases, name, "p99_ms"), "ms", "<= 40" if conns == 50 else "", (lambda v: v <= 40) if conns == 50 else None)
        add("  server CPU per message", _get(cases, name, "cpu_ms_per_msg"), "ms", "<= 0.5", lambda v: v <= 0.5)
        add("    of which reactor thread", _get(cases, name, "cpu_reactor_ms_per_msg"), "ms")
        if stock:
            # The same durable delivery under Twisted's stock classes, same rounds.
            add("  Twisted stock: CPU per message", _get(cases, "stock-2k-c%d" % (conns,), "cpu_ms_per_msg"), "ms")
        add("  load generator CPU per message", _get(cases, name, "client_cpu_ms_per_msg"), "ms")
    add("SMTP 1 MB, 10 conn: msgs/s", _get(cases, "smtp-1m-c10", "msgs_per_s"), "msg/s", ">= 200", lambda v: v >= 200)
    add("  p99 latency", _get(cases, "smtp-1m-c10", "p99_ms"), "ms")
    add("  server CPU per message", _get(cases, "smtp-1m-c10", "cpu_ms_per_msg"), "ms")
    one = cases.get("pop3-one") or {}
    add("POP3 %s RETR, one user" % (one.get("messages", "?"),), one.get("retr_seconds"), "s", "<= 0.2", lambda v: v <= 0.2)
    add("  login (USER/PASS)", one.get("login_seconds"), "s")
    ten = cases.get("pop3-ten") or {}
    add("POP3 RETR, ten users at once", ten.get("msgs_per_s"), "msg/s", ">= 10000", lambda v: v >= 10000)
    add("  login (ten at once)", ten.get("login_seconds"), "s")
    add("  load generator CPU per message", ten.get("client_cpu_ms_per_msg"), "ms")
    idle = cases.get("idle") or {}
    add("Idle sessions (%s of %s)" % (idle.get("established", "?"), idle.get("wanted", "?")), idle.get("established"), "sessions", ">= 10000", lambda v: v >= 10000)
    rss = idle.get("rss_after")
    add("  server RSS with them", rss / MB if rss else None, "MB", "< 150", lambda v: v < 150)
    add("  RSS per session", idle.get("rss_per_session"), "KB")
    big = cases.get("big") or {}
    add("%s MB message: peak RSS rise" % (round(big.get("size", 0) / MB),), big["peak_rise"] / MB if big.get("peak_rise") is not None else None, "MB", "<= 10", lambda v: v <= 10)
    add("  its SMTP transaction", big.get("seconds"), "s")
    ceilings = results.get("ceilings", {})
    for key, label in (
        ("fsync1", "Machine: file+dir fsync, 1 thread"),
        ("fsync10", "Machine: file+dir fsync, 10 threads"),
        ("create", "Machine: file create+2 KB write"),
        ("rtt", "Machine: loopback round trips"),
    ):
        figure = ceilings.get(key) or {}
        add(label, figure.get("per_second"), "/s")
        if figure.get("cpu_ms_per_op") is not None:
            add("  CPU per operation", figure["cpu_ms_per_op"], "ms")
        again = (results.get("ceilings_after") or {}).get(key)
        if again:
            add("  again at the end of the run", again.get("per_second"), "/s")
    return rows


def _format(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return "{:,.0f}".format(value)
    if abs(value) >= 10:
        return "%.1f" % (value,)
    return "%.3g" % (value,)


def formatTable(rows: List[Row]) -> str:
    """A plain-text table: figure, unit, target, and whether it is met."""
    header = ("figure", "value", "unit", "target", "met")
    lines = [header]
    for row in rows:
        met = {True: "yes", False: "NO", None: ""}[row.met]
        lines.append((row.name, _format(row.value), row.unit, row.target, met))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append(
            "  ".join(
                cell.rjust(widths[i]) if i == 1 else cell.ljust(widths[i]) for i, cell in enumerate(line)
            ).rstrip()
        )
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
