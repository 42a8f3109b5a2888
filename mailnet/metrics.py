# -*- test-case-name: tests.test_metrics -*-
"""
What mailnet counts, for Prometheus (C{GET /metrics} on the C{http}
listener, see L{mailnet.web}).

The counters and histograms below live in one module-level registry,
L{REGISTRY}: the modules that count call one function here each (a
one-line hook), from any thread (prometheus_client is thread-safe).
Values that are read rather than counted (queue length, the age of its
oldest entry, free disk space, open sessions) come from a
L{ServiceCollector} made for the running L{mailnet.service.MailService};
L{registryFor} combines both into the registry a scrape renders.

Label sets are bounded: listener roles, protocols, outcomes, and enhanced
status codes from a fixed list.  No address, host name or free text ever
becomes a label.
"""

import re
import time
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# The *_created series (when each counter was made) only double a scrape's size.
disable_created_metrics()

#: Everything counted; scrapes combine it with a service's L{ServiceCollector}.
REGISTRY = CollectorRegistry(auto_describe=True)

CONNECTIONS = Counter(
    "mailnet_connections",
    "Client connections admitted, by listener.",
    ["listener"],
    registry=REGISTRY,
)
REFUSED_CONNECTIONS = Counter(
    "mailnet_connections_refused",
    "Client connections refused by the connection limits, by listener and which limit.",
    ["listener", "limit"],
    registry=REGISTRY,
)
SESSIONS = Gauge(
    "mailnet_sessions",
    "Client connections open now, by listener.",
    ["listener"],
    registry=REGISTRY,
)
TLS_CONNECTIONS = Counter(
    "mailnet_tls_connections",
    "Client connections that ended after a TLS handshake, by listener and TLS version.",
    ["listener", "version"],
    registry=REGISTRY,
)
MESSAGES = Counter(
    "mailnet_messages",
    "Messages (received: accepted by SMTP, by listener) and recipients (delivered: into a local "
    "Maildir; relayed: to another server; deferred: an attempt failed, to be retried; failed: refused "
    "permanently by the next hop; bounced: given up, the sender notified).",
    ["event", "listener"],
    registry=REGISTRY,
)
REFUSALS = Counter(
    "mailnet_smtp_refusals",
    "SMTP replies of 400 and above, by reply code and enhanced status code (other: not one of mailnet's).",
    ["code", "status"],
    registry=REGISTRY,
)
LOGINS = Counter(
    "mailnet_logins",
    "Login attempts by protocol and outcome (success, failure, busy: refused unchecked, error).",
    ["protocol", "outcome"],
    registry=REGISTRY,
)
DATA_LATENCY = Histogram(
    "mailnet_smtp_data_seconds",
    "Time from the end of a message's data to the 250 reply (checks, stores, fsyncs).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
FSYNC = Histogram(
    "mailnet_fsync_seconds",
    "Time of one fsync of a message file or a Maildir directory.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)
STORAGE_REFUSALS = Counter(
    "mailnet_storage_refusals",
    "Transactions refused for want of storage (disk: below min_free_space; quota: a mailbox is full).",
    ["reason"],
    registry=REGISTRY,
)

#: The enhanced status codes that may become labels; anything else is "other".
_KNOWN_STATUS = {
    "4.2.2", "4.3.0", "4.3.1", "4.4.2", "4.5.3", "4.7.0", "4.7.1", "4.7.8", "4.7.24", "4.7.25",
    "5.0.0", "5.1.1", "5.1.3", "5.1.7", "5.1.8", "5.1.10", "5.2.2", "5.3.4", "5.4.6", "5.5.1", "5.5.2",
    "5.5.4", "5.5.6", "5.6.0", "5.6.7", "5.7.0", "5.7.1", "5.7.8", "5.7.9", "5.7.11", "5.7.23",
    "5.7.24", "5.7.25", "5.7.26", "5.7.27",
}
_KNOWN_CODES = {421, 450, 451, 452, 454, 500, 501, 502, 503, 504, 530, 535, 538, 550, 551, 552, 553, 554, 555}
_STATUS = re.compile(r"([245]\.\d{1,3}\.\d{1,3}) ")

#: Names of the portal interfaces, as protocols.
_PROTOCOLS = {"ISender": "smtp", "IMailbox": "pop3", "IMailAccount": "imap"}


_children: Dict[Tuple[int, Tuple[str, ...]], Any] = {}


def _child(family: Any, *labels: str) -> Any:
    """C{family.labels(*labels)}, remembered (labels() costs more than the increment)."""
    key = (id(family), labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = family.labels(*labels)
    return child


def now() -> float:
    """A start time for L{observeDataLatency} (a monotonic clock)."""
    return time.perf_counter()


def connectionAdmitted(listener: str) -> None:
    _child(CONNECTIONS, listener).inc()
    _child(SESSIONS, listener).inc()


def connectionClosed(listener: str, *transports: Any) -> None:
    """
    A connection that L{connectionAdmitted} counted ended.

    @param transports: where its TLS version may be found (the protocol,
        then its transport).
    """
    _child(SESSIONS, listener).dec()
    version = next((v for v in map(tlsVersion, transports) if v is not None), None)
    if version is not None:
        _child(TLS_CONNECTIONS, listener, version).inc()


def connectionRefused(listener: str, perClient: bool) -> None:
    REFUSED_CONNECTIONS.labels(listener, "per_client" if perClient else "server").inc()


def tlsVersion(transport: Any) -> Optional[str]:
    """
    @return: the TLS version (C{"TLSv1.3"}) of a connection whose handshake
        finished, from its transport or the transports under it; L{None}
        without TLS.
    """
    for _ in range(5):
        if transport is None:
            return None
        # Implicit TLS: a TLSMemoryBIOProtocol in the chain.  STARTTLS: the
        # TCP transport's getHandle is the TLS protocol's (twisted.internet._newtls).
        handle = getattr(getattr(transport, "getHandle", None), "__self__", None)
        connection = getattr(transport, "_tlsConnection", None) or getattr(handle, "_tlsConnection", None)
        if connection is not None:
            try:
                name = connection.get_protocol_version_name()
            except Exception:
                return None
            return name if name in ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3") else None
        transport = getattr(transport, "transport", None)
    return None


def messageReceived(role: str, started: float) -> None:
    """An SMTP server (C{role} mta, submission or smtps) answered 250 at the end of data."""
    _child(MESSAGES, "received", "smtp" if role == "mta" else role).inc()
    DATA_LATENCY.observe(max(0.0, time.perf_counter() - started))


def recipients(event: str, count: int = 1) -> None:
    """C{delivered}, C{relayed}, C{deferred}, C{failed} or C{bounced}: C{count} recipients."""
    if count:
        _child(MESSAGES, event, "").inc(count)


def refusal(code: int, text: str) -> None:
    """An SMTP reply of 400 or above (C{text} as sent, after the code)."""
    match = _STATUS.match(text + " ")
    status = match.group(1) if match and match.group(1) in _KNOWN_STATUS else ("other" if match else "")
    _child(REFUSALS, str(code) if code in _KNOWN_CODES else "other", status).inc()


def login(result: Any, interface: Any) -> Any:
    """
    A callback and errback for L{mailnet.cred.Authenticator.login}'s result:
    count it, and pass it on unchanged.
    """
    from twisted.python.failure import Failure

    from mailnet.errors import LoginBusy

    protocol = _PROTOCOLS.get(getattr(interface, "__name__", ""), "other")
    if not isinstance(result, Failure):
        outcome = "success"
    else:
        from twisted.cred.error import UnauthorizedLogin

        if result.check(UnauthorizedLogin):
            outcome = "failure"
        elif result.check(LoginBusy):
            outcome = "busy"
        else:
            outcome = "error"
    _child(LOGINS, protocol, outcome).inc()
    return result


def timedFsync(fsync: Callable[[int], None], fd: int) -> None:
    """C{fsync(fd)}, timed into L{FSYNC}."""
    started = time.perf_counter()
    fsync(fd)
    FSYNC.observe(time.perf_counter() - started)


def storageRefused(reason: str) -> None:
    STORAGE_REFUSALS.labels(reason).inc()


class ServiceCollector(Collector):
    """
    Values read from a running service at each scrape: its queue, open
    connections, free space in the data dir, and quota use.

    @param service: a L{mailnet.service.MailService}, or anything with the
        attributes read here.
    """

    def __init__(self, service: Any, clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.clock = clock

    def collect(self) -> Iterator[Any]:
        from mailnet import __version__

        service = self.service
        info = GaugeMetricFamily("mailnet_build_info", "Always 1; the version in a label.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        relay = getattr(service, "relay", None)
        entries = list(getattr(relay, "_entries", {}).values()) if relay is not None else []
        yield GaugeMetricFamily("mailnet_queue_messages", "Messages in the relay queue.", value=len(entries))
        oldest = min((e.created for e in entries), default=None)
        yield GaugeMetricFamily(
            "mailnet_queue_oldest_seconds",
            "Age of the oldest message in the relay queue (0 when it is empty).",
            value=max(0.0, self.clock() - oldest) if oldest is not None else 0.0,
        )
        limiter = getattr(service, "limiter", None)
        if limiter is not None:
            yield GaugeMetricFamily("mailnet_connections_open", "Client connections open now, all listeners.", value=limiter.open)
            yield GaugeMetricFamily(
                "mailnet_connections_max", "The connection budget ([limits] max_connections).", value=limiter.maxConnections
            )
        disk = getattr(service, "diskSpace", None)
        if disk is not None:
            free, total = disk.usage()
            yield GaugeMetricFamily("mailnet_data_dir_free_bytes", "Free space for mailnet on the data dir's file system.", value=free)
            yield GaugeMetricFamily("mailnet_data_dir_size_bytes", "Size of the data dir's file system.", value=total)
            yield GaugeMetricFamily(
                "mailnet_data_dir_min_free_bytes", "Below this much free space new mail is refused ([limits] min_free_space).",
                value=disk.threshold(total),
            )
        quotas = getattr(service, "quotas", None)
        if quotas is not None:
            yield from quotas.collect()


class _Shared(Collector):
    """The module's counters, inside a scrape's registry."""

    def collect(self) -> Iterable[Any]:
        return REGISTRY.collect()


def registryFor(service: Any) -> CollectorRegistry:
    """
    @return: a registry for C{service}'s scrapes: the shared counters and
        its L{ServiceCollector}.
    """
    from prometheus_client import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Shared())
    registry.register(ServiceCollector(service))
    # process_cpu_seconds_total, process_resident_memory_bytes, open fds ... (Linux).
    ProcessCollector(registry=registry)
    return registry
