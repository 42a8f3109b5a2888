# -*- test-case-name: tests.test_relay -*-
"""
Outbound delivery: the service that runs the relay queue.

Each queued message (a L{mailnet.store.queue.QueueEntry}) goes through
I{rounds}.  A round groups the still-pending recipients by domain and makes
one connection per domain (one SMTP transaction for all its recipients),
then records every recipient's result durably.  After the round:

  - recipients that failed permanently get a bounce (RFC 3464), unless the
    sender is the null sender (RFC 5321 §4.5.5: no loops);
  - if recipients are still pending, the next round is scheduled with
    exponential back-off (C{retry_initial} doubling up to C{retry_max});
    once C{delay_warning_after} has passed the sender is warned, once;
    after C{give_up_after} the rest fail and bounce;
  - otherwise the message leaves the queue.

The next hop for a domain is C{routes[domain]}, else the smarthost, else
the domain's MX hosts (RFC 5321 §5.1).  Connections are bounded in total
and per domain.
"""

import random
from collections import defaultdict, deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple

import attr
from automat import MethodicalMachine
from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredLock,
    TimeoutError,
    inlineCallbacks,
    succeed,
)
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailnet import metrics
from mailnet.address import splitAddress
from mailnet.bounce import DELAYED, FAILED, RecipientResult, makeBounce, statusFromReply
from mailnet.config import RelaySettings
from mailnet.errors import SMTPReply
from mailnet.smtp._relayclient import (
    DELIVERED,
    PERMANENT,
    TEMPORARY,
    HostFailure,
    Job,
    Outcome,
    RelayClientFactory,
    _reason,
)
from mailnet.store import queue as q
from mailnet.store.queue import DiskQueue, EntryGone, QueueEntry, RecipientState

log = Logger()

# How often (seconds) the service looks for a flush request from mailnet-admin.
FLUSH_POLL = 5.0
SMTP_PORT = 25
CONNECT_TIMEOUT = 30
RESOLV_CONF = "/etc/resolv.conf"
# How long stopping waits for rounds in progress to record their results.
STOP_GRACE = 10

# RFC 7505 §4.2: mail to a domain with a null MX fails at once.
NULL_MX_REPLY = "556 5.1.10 %s does not accept mail (null MX, RFC 7505)"
NO_DOMAIN_REPLY = "550 5.1.2 %s: no such domain"
DNS_FAILURE_REPLY = "451 4.4.3 DNS lookup for %s failed: %s"
# RFC 5321 §5.1 / RFC 3463 X.4.6: we are the best MX, yet the domain is not ours.
LOOP_REPLY = "554 5.4.6 mail for %s loops back to myself"
EXPIRED_STATUS = "5.4.7"  # RFC 3463: delivery time expired


class RoutingError(Exception):
    """
    No next hop could be found for a domain.

    @ivar reply: the reason, shaped as an SMTP reply.
    @ivar permanent: whether it is final.
    """

    def __init__(self, reply: str, permanent: bool) -> None:
        super().__init__(reply)
        self.reply = reply
        self.permanent = permanent


def _exchangeName(record: Any) -> str:
    name = record.name
    name = getattr(name, "name", name)
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    return str(name).rstrip(".")


def orderExchanges(records: Sequence[Any], rng: random.Random, ownName: Optional[str] = None) -> List[str]:
    """
    Order MX records for delivery.

    RFC 5321 §5.1: lowest preference first, hosts of equal preference in
    random order; if we are one of the hosts, only the better ones are
    left (anything else would loop).

    @param records: L{twisted.names.dns.Record_MX} payloads.
    @param ownName: our host name.
    @return: host names, possibly none (all were us or worse than us).
    @raise RoutingError: for a null MX (RFC 7505 §3: one record, preference
        0, exchange "."), which is final.
    """
    named = [(r.preference, _exchangeName(r)) for r in records]
    real = [(pref, name) for pref, name in named if name]
    if named and not real:
        raise RoutingError("", permanent=True)
    if ownName:
        ours = [pref for pref, name in real if name.lower() == ownName.lower()]
        if ours:
            real = [(pref, name) for pref, name in real if pref < min(ours)]
    rng.shuffle(real)
    real.sort(key=lambda pair: pair[0])
    hosts: List[str] = []
    for _, name in real:
        if name.lower() not in (h.lower() for h in hosts):
            hosts.append(name)
    return hosts


class _Schedule:
    """
    The life of one queued message in the relay: when its next round runs.

    All transitions are in L{_Schedule._transitions} below.  A flush that
    arrives during a round is remembered and starts the next round as soon
    as this one ends; events for a finished message are ignored.
    """

    _machine = MethodicalMachine()

    def __init__(self, clock: Any, entryId: str, startRound: Callable[[str], None]) -> None:
        self._clock = clock
        self._entryId = entryId
        self._startRoundFor = startRound
        self._timer: Any = None

    @_machine.state(initial=True)
    def new(self) -> None:
        "Not scheduled yet."

    @_machine.state()
    def waiting(self) -> None:
        "A timer starts the next round."

    @_machine.state()
    def delivering(self) -> None:
        "A round is in progress."

    @_machine.state()
    def deliveringFlushed(self) -> None:
        "A round is in progress, and a flush asked for another at once."

    @_machine.state()
    def finished(self) -> None:
        "Delivered, bounced, deleted, or the relay stopped: nothing to do."

    @_machine.input()
    def wakeAt(self, when: float) -> None:
        "Run the next round at C{when} (seconds since the epoch)."

    @_machine.input()
    def due(self) -> None:
        "The timer fired."

    @_machine.input()
    def flush(self) -> None:
        "Retry now."

    @_machine.input()
    def roundDone(self, when: float) -> None:
        "A round ended with recipients still pending; the next is due at C{when}."

    @_machine.input()
    def finish(self) -> None:
        "Stop scheduling this message."

    @_machine.output()
    def _arm(self, when: float) -> None:
        delay = max(0.0, when - self._clock.seconds())
        self._timer = self._clock.callLater(delay, self.due)

    @_machine.output()
    def _armNow(self) -> None:
        self._timer = self._clock.callLater(0, self.due)

    @_machine.output()
    def _disarm(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    @_machine.output()
    def _startRound(self) -> None:
        self._timer = None
        self._startRoundFor(self._entryId)

    _transitions = [
        new.upon(wakeAt, enter=waiting, outputs=[_arm]),
        new.upon(finish, enter=finished, outputs=[]),
        waiting.upon(wakeAt, enter=waiting, outputs=[_disarm, _arm]),
        waiting.upon(flush, enter=waiting, outputs=[_disarm, _armNow]),
        waiting.upon(due, enter=delivering, outputs=[_startRound]),
        waiting.upon(finish, enter=finished, outputs=[_disarm]),
        delivering.upon(flush, enter=deliveringFlushed, outputs=[]),
        delivering.upon(roundDone, enter=waiting, outputs=[_arm]),
        delivering.upon(finish, enter=finished, outputs=[]),
        deliveringFlushed.upon(flush, enter=deliveringFlushed, outputs=[]),
        deliveringFlushed.upon(roundDone, enter=waiting, outputs=[_armNow]),
        deliveringFlushed.upon(finish, enter=finished, outputs=[]),
        finished.upon(wakeAt, enter=finished, outputs=[]),
        finished.upon(flush, enter=finished, outputs=[]),
        finished.upon(roundDone, enter=finished, outputs=[]),
        finished.upon(finish, enter=finished, outputs=[]),
    ]


class RelayService(Service):
    """
    Runs the relay queue.

    @param queue: the L{DiskQueue}.
    @param settings: next hops, retry schedule, connection limits.
    @param hostname: our name, for EHLO and in bounces.
    @param reactor: provides L{IReactorTime} (scheduling, time-outs) and,
        unless C{connector} is given, L{IReactorTCP} for connections.
    @param inject: C{(returnPath, recipients) -> IMessageReceiver}: how
        bounces and delay warnings are sent (the delivery agent's C{receive},
        which routes local and remote recipients).
    @param resolver: an L{twisted.names} L{IResolver} for MX look-ups; by
        default one built from the system's resolver configuration.
    @param clientTLSOptions: what STARTTLS uses: a context factory or
        client connection creator, or a callable taking the next hop's
        host name and returning one.  By default, opportunistic encryption
        without certificate checks (RFC 7435 §1.3: better than plaintext).
    @param connector: C{(host, port, factory) -> Deferred} connecting a
        client; by default a L{HostnameEndpoint} on C{reactor} (A and AAAA
        look-ups, RFC 8305).
    """

    def __init__(
        self,
        queue: DiskQueue,
        settings: RelaySettings,
        hostname: str,
        reactor: Any,
        inject: Callable[[str, Sequence[str]], Any],
        resolver: Any = None,
        clientTLSOptions: Any = None,
        connector: Optional[Callable[[str, int, Any], Deferred]] = None,
        rng: Optional[random.Random] = None,
    ) -> None:
        self.queue = queue
        self.settings = settings
        self.hostname = hostname
        self._reactor = reactor
        self._inject = inject
        self._resolver = resolver
        self._tlsOptions = clientTLSOptions
        self._connector = connector or self._connectTCP
        self._random = rng or random.Random()
        self._entries: Dict[str, QueueEntry] = {}
        self._schedules: Dict[str, _Schedule] = {}
        self._busy: Set[str] = set()
        self._locks: Dict[str, DeferredLock] = {}
        self._active = 0
        self._activePerDomain: Dict[str, int] = defaultdict(int)
        self._waiting: Deque[Tuple[str, Deferred]] = deque()
        # Waiters whose message may ride along on an open connection.
        self._legs: Dict[Deferred, _Leg] = {}
        self._clients: Set[Any] = set()
        self._connecting: Set[Deferred] = set()
        self._idle: List[Deferred] = []
        self._poller: Optional[LoopingCall] = None
        self._polling = False
        self._stopping = False
        self._loaded: Optional[Deferred] = None

    # --- service -------------------------------------------------------------

    def startService(self) -> None:
        Service.startService(self)
        self._stopping = False
        self.queue.listener = self._added
        self._loaded = self.queue.load()
        self._loaded.addCallback(self._restore)
        self._loaded.addErrback(lambda f: log.failure("Could not read the relay queue", f))

    def _restore(self, entries: List[QueueEntry]) -> None:
        if self._stopping:
            return
        log.info("Relay queue: {count} message(s) waiting", count=len(entries))
        for entry in entries:
            self._track(entry)
        self._poller = LoopingCall(self._pollFlush)
        self._poller.clock = self._reactor
        self._poller.start(FLUSH_POLL, now=True)

    def stopService(self) -> Deferred:
        Service.stopService(self)
        self._stopping = True
        if self.queue.listener == self._added:
            self.queue.listener = None
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        for schedule in self._schedules.values():
            schedule.finish()
        self._schedules.clear()
        for _, waiter in list(self._waiting):
            waiter.cancel()
        self._waiting.clear()
        self._legs.clear()
        for connecting in list(self._connecting):
            connecting.cancel()
        closed = []
        for client in list(self._clients):
            closed.append(client.closed)
            if client.transport is not None:
                client.transport.abortConnection()
        # Rounds end quickly now; one stuck in a DNS look-up is not waited for.
        # (A connection may outlive its round: it carried other messages.)
        d = DeferredList([self.whenIdle()] + closed, consumeErrors=True)
        d.addTimeout(STOP_GRACE, self._reactor)
        d.addErrback(lambda f: f.trap(TimeoutError))
        return d

    def whenIdle(self) -> Deferred:
        """
        @return: a L{Deferred} that fires when no round is in progress.
        """
        if not self._busy:
            return succeed(None)
        d: Deferred = Deferred()
        self._idle.append(d)
        return d

    # --- the schedule ------------------------------------------------------------

    def _added(self, entry: QueueEntry) -> None:
        # Known already: another process's entry found twice (mailnet.workers).
        if not self._stopping and entry.id not in self._entries:
            self._track(entry)

    def _track(self, entry: QueueEntry) -> None:
        self._entries[entry.id] = entry
        schedule = self._schedules[entry.id] = _Schedule(self._reactor, entry.id, self._startRound)
        schedule.wakeAt(entry.next_try if entry.next_try is not None else self._reactor.seconds())

    def _startRound(self, entryId: str) -> None:
        entry = self._entries[entryId]
        self._busy.add(entryId)
        d = self._round(entry)
        d.addCallbacks(self._roundFinished, self._roundFailed, callbackArgs=(entry,), errbackArgs=(entry,))

    def _roundFailed(self, failure: Any, entry: QueueEntry) -> None:
        log.failure("Relay round for {id} failed", failure, id=entry.id)
        # Not at once again: whatever broke would likely break again.
        entry.next_try = self._reactor.seconds() + self.settings.retry_max
        self._roundFinished(None, entry)

    def _roundFinished(self, _: Any, entry: QueueEntry) -> None:
        self._busy.discard(entry.id)
        schedule = self._schedules.get(entry.id)
        if schedule is not None:
            if self._stopping or entry.id not in self._entries:
                schedule.finish()
            else:
                assert entry.next_try is not None
                schedule.roundDone(entry.next_try)
        if not self._busy:
            idle, self._idle = self._idle, []
            for d in idle:
                if not d.called:
                    d.callback(None)

    def flush(self) -> None:
        """
        Retry every queued message now (those in a round: right after it).
        """
        log.info("Flushing the relay queue ({count} message(s))", count=len(self._entries))
        for schedule in list(self._schedules.values()):
            schedule.flush()

    @inlineCallbacks
    def _pollFlush(self) -> Any:
        if self._polling:
            return
        self._polling = True
        try:
            requested = yield self.queue.takeFlushRequest()
            if requested and not self._stopping:
                self.flush()
        except Exception:
            log.failure("Could not check for a flush request")
        finally:
            self._polling = False

    # --- one round ---------------------------------------------------------------

    @inlineCallbacks
    def _round(self, entry: QueueEntry) -> Any:
        exists = yield self.queue.exists(entry.id)
        if not exists:
            log.info("{id} was deleted from the queue", id=entry.id)
            yield self.queue.remove(entry.id)  # whatever half is left
            self._forget(entry.id)
            return
        groups: Dict[str, List[str]] = {}
        for recipient in entry.pending():
            domain = splitAddress(recipient.address)[1].lower()
            groups.setdefault(domain, []).append(recipient.address)
        jobs = [self._domainJob(entry, domain, addresses) for domain, addresses in groups.items()]
        results = yield DeferredList(jobs, consumeErrors=True)
        for ok, value in results:
            if not ok:
                log.failure("Delivery job for {id} failed", value, id=entry.id)
        if self._stopping:
            return
        yield self._afterRound(entry)

    @inlineCallbacks
    def _domainJob(self, entry: QueueEntry, domain: str, addresses: List[str]) -> Any:
        leg = _Leg(entry, addresses)
        while True:
            try:
                granted = yield self._acquire(domain, leg)
            except CancelledError:
                return  # the service is stopping
            if isinstance(granted, _Ride):
                # Carried by a connection already open to the domain.
                outcomes = yield granted.outcomes
                if outcomes is None:
                    # That connection broke before this message was tried:
                    # it goes on its own (and rides no more this round).
                    leg.rode = True
                    if self._stopping:
                        return
                    continue
                break
            closing: List[Deferred] = []
            try:
                if self._stopping:
                    return
                outcomes = yield self._deliverDomain(entry, domain, addresses, closing)
            finally:
                # The connection slot is free only once the socket is (it
                # may carry other messages for the domain meanwhile).
                DeferredList(closing, consumeErrors=True).addCallback(lambda _: self._release(domain))
            break
        self._apply(entry, outcomes)
        yield self._save(entry)

    def _apply(self, entry: QueueEntry, outcomes: Sequence[Outcome]) -> None:
        byAddress = {r.address: r for r in entry.recipients}
        for outcome in outcomes:
            state = byAddress[outcome.address]
            state.attempts += 1
            state.remote_mta = outcome.host
            metrics.recipients({DELIVERED: "relayed", PERMANENT: "failed"}.get(outcome.kind, "deferred"))
            if outcome.kind == DELIVERED:
                state.status = q.DELIVERED
                state.last_error = None
                log.info(
                    "{id}: <{recipient}> delivered via {host} ({tls}): {reply}",
                    id=entry.id, recipient=outcome.address, host=outcome.host, reply=outcome.reply, tls=outcome.tls or "no TLS",
                )
            elif outcome.kind == PERMANENT:
                state.status = q.FAILED
                state.last_error = outcome.reply
                state.dsn_status = _permanentStatus(outcome.reply)
                log.warn(
                    "{id}: <{recipient}> failed permanently ({host}): {reply}",
                    id=entry.id, recipient=outcome.address, host=outcome.host, reply=outcome.reply,
                )
            else:
                state.last_error = outcome.reply
                entry.last_error = outcome.reply
                log.info(
                    "{id}: <{recipient}> deferred ({host}): {reply}",
                    id=entry.id, recipient=outcome.address, host=outcome.host, reply=outcome.reply,
                )

    @inlineCallbacks
    def _save(self, entry: QueueEntry) -> Any:
        lock = self._locks.setdefault(entry.id, DeferredLock())
        yield lock.acquire()
        try:
            yield self.queue.update(entry)
        except EntryGone:
            log.info("{id} was deleted from the queue", id=entry.id)
            self._forget(entry.id)
        finally:
            lock.release()

    def _forget(self, entryId: str) -> None:
        self._entries.pop(entryId, None)
        self._locks.pop(entryId, None)
        schedule = self._schedules.pop(entryId, None)
        if schedule is not None:
            schedule.finish()

    @inlineCallbacks
    def _afterRound(self, entry: QueueEntry) -> Any:
        if entry.id not in self._entries:
            return  # deleted meanwhile
        now = self._reactor.seconds()
        entry.attempts += 1
        pending = entry.pending()
        if pending and now - entry.created >= self.settings.give_up_after:
            for state in pending:
                state.status = q.FAILED
                state.dsn_status = EXPIRED_STATUS
                state.last_error = state.last_error or "451 4.4.7 delivery time expired"
                log.warn(
                    "{id}: <{recipient}> given up after {days:.1f} days: {reply}",
                    id=entry.id, recipient=state.address, days=(now - entry.created) / 86400.0,
                    reply=state.last_error,
                )
            pending = []
        failed = [r for r in entry.recipients if r.status == q.FAILED and not r.notified]
        metrics.recipients("bounced", len(failed))
        if failed:
            yield self._notify(entry, failed, FAILED, now)
            for state in failed:
                state.notified = True
        if not pending:
            yield self.queue.remove(entry.id)
            self._forget(entry.id)
            log.info("{id}: done, removed from the queue", id=entry.id)
            return
        if not entry.warned and now - entry.created >= self.settings.delay_warning_after:
            yield self._notify(entry, pending, DELAYED, now)
            entry.warned = True
        delay = min(self.settings.retry_initial * 2 ** (entry.attempts - 1), self.settings.retry_max)
        # One last try when the time is up, so expiry is not late by a whole back-off.
        entry.next_try = min(now + delay, max(now, entry.created + self.settings.give_up_after))
        yield self._save(entry)

    @inlineCallbacks
    def _notify(self, entry: QueueEntry, states: Sequence[RecipientState], action: str, now: float) -> Any:
        if not entry.sender:
            return  # RFC 5321 §4.5.5 / RFC 3464 §2: never notify the null sender
        results = [
            RecipientResult(
                address=s.address,
                action=action,
                status=(s.dsn_status or "5.0.0") if action == FAILED else statusFromReply(s.last_error or "", False),
                diagnostic=s.last_error,
                remoteMTA=s.remote_mta,
                willRetryUntil=entry.created + self.settings.give_up_after,
            )
            for s in states
        ]
        try:
            headers = yield self.queue.readHeaders(entry.id)
            message = makeBounce(self.hostname, entry.sender, results, headers, entry.created, now)
            receiver = self._inject("", [entry.sender])
            receiver.write(message)
            notificationId = yield receiver.finish()
        except SMTPReply as e:
            # The sender is one of our own addresses that no longer exists.
            log.warn("{id}: could not notify <{sender}>: {reply}", id=entry.id, sender=entry.sender, reply=e)
            return
        except Exception:
            log.failure("{id}: could not notify <{sender}>", id=entry.id, sender=entry.sender)
            return
        log.info(
            "{id}: {kind} notice {nid} sent to <{sender}>",
            id=entry.id, kind="bounce" if action == FAILED else "delay", nid=notificationId, sender=entry.sender,
        )

    # --- connection slots -------------------------------------------------------------

    def _acquire(self, domain: str, leg: Optional["_Leg"] = None) -> Deferred:
        """
        A connection slot for C{domain}: fires with L{None} when it is
        ours, or with a L{_Ride} when an open connection to the domain
        takes the message (C{leg}) along instead.
        """
        if self._hasSlot(domain):
            self._take(domain)
            return succeed(None)
        d: Deferred = Deferred(lambda d: self._dropWaiter(d))
        self._waiting.append((domain, d))
        if leg is not None and not leg.rode:
            self._legs[d] = leg
        return d

    def _dropWaiter(self, d: Deferred) -> None:
        self._waiting = deque(w for w in self._waiting if w[1] is not d)
        self._legs.pop(d, None)

    def _claim(self, domain: str) -> Optional[Tuple["_Leg", Deferred]]:
        """
        Take the longest-waiting message for C{domain} off the waiting list
        for a connection that is open already.

        @return: its leg and the L{Deferred} to fire with its outcomes
            (L{None}: not tried, it goes on its own), or L{None}.
        """
        for waiter in self._waiting:
            waitingDomain, d = waiter
            leg = self._legs.get(d)
            if waitingDomain == domain and leg is not None:
                self._waiting.remove(waiter)
                del self._legs[d]
                ride = _Ride(Deferred())
                d.callback(ride)
                return leg, ride.outcomes
        return None

    def _hasSlot(self, domain: str) -> bool:
        return (
            self._active < self.settings.max_connections
            and self._activePerDomain[domain] < self.settings.max_connections_per_domain
        )

    def _take(self, domain: str) -> None:
        self._active += 1
        self._activePerDomain[domain] += 1

    def _release(self, domain: str) -> None:
        self._active -= 1
        self._activePerDomain[domain] -= 1
        if not self._activePerDomain[domain]:
            del self._activePerDomain[domain]
        for waiter in list(self._waiting):
            waitingDomain, d = waiter
            if self._hasSlot(waitingDomain):
                self._waiting.remove(waiter)
                self._legs.pop(d, None)
                self._take(waitingDomain)
                d.callback(None)

    # --- next hops -------------------------------------------------------------

    def nextHops(self, domain: str) -> Deferred:
        """
        Where mail for C{domain} goes.

        @return: L{Deferred} firing with a L{list} of C{(host, port)} to try
            in order, or failing with L{RoutingError}.
        """
        route = self.settings.routes.get(domain)
        if route is not None:
            return succeed([route])
        if self.settings.smarthost is not None:
            return succeed([self.settings.smarthost])
        return self._lookupMX(domain)

    @inlineCallbacks
    def _lookupMX(self, domain: str) -> Any:
        from twisted.names import error as dnserror

        resolver = self._getResolver()
        try:
            answers, _, _ = yield resolver.lookupMailExchange(domain)
        except (dnserror.DNSNameError, dnserror.AuthoritativeDomainError):
            # NXDOMAIN: RFC 5321 §5.1 leaves nothing to try.  (SERVFAIL,
            # REFUSED and the other DomainErrors are DNS trouble: temporary.)
            raise RoutingError(NO_DOMAIN_REPLY % (domain,), permanent=True) from None
        except Exception as e:
            raise RoutingError(DNS_FAILURE_REPLY % (domain, e.__class__.__name__), permanent=False) from e
        from twisted.names import dns

        records = [a.payload for a in answers if a.type == dns.MX]
        if not records:
            # RFC 5321 §5.1: no MX records: the domain itself is the host
            # (its A or AAAA records: the endpoint looks them up).
            return [(domain, SMTP_PORT)]
        try:
            hosts = orderExchanges(records, self._random, self.hostname)
        except RoutingError:
            raise RoutingError(NULL_MX_REPLY % (domain,), permanent=True) from None
        if not hosts:
            raise RoutingError(LOOP_REPLY % (domain,), permanent=True)
        return [(host, SMTP_PORT) for host in hosts]

    def _getResolver(self) -> Any:
        if self._resolver is None:
            from mailnet.dns import makeResolver

            # The service passes its DNSClient ([dns] resolvers); alone, the system's.
            self._resolver = makeResolver(self._reactor)
        return self._resolver

    # --- delivery -------------------------------------------------------------

    @inlineCallbacks
    def _deliverDomain(
        self, entry: QueueEntry, domain: str, addresses: List[str], closing: Optional[List[Deferred]] = None
    ) -> Any:
        try:
            hops = yield self.nextHops(domain)
        except RoutingError as e:
            kind = PERMANENT if e.permanent else TEMPORARY
            return [Outcome(a, kind, e.reply) for a in addresses]
        useSmarthost = domain not in self.settings.routes and self.settings.smarthost is not None
        auth = None
        if useSmarthost and self.settings.smarthost_user:
            auth = (self.settings.smarthost_user, self.settings.smarthost_password)
        lastError = "451 4.4.1 no next hop for %s" % (domain,)
        attempts = [(host, port, True) for host, port in hops]
        while attempts and not self._stopping:
            host, port, useTLS = attempts.pop(0)
            try:
                outcomes = yield self._deliverTo(entry, host, port, addresses, auth, useTLS, closing, domain)
                return outcomes
            except HostFailure as e:
                log.info("{id}: {host}:{port} failed: {reply}", id=entry.id, host=host, port=port, reply=e.reply)
                if e.permanent:
                    return [Outcome(a, PERMANENT, e.reply, host) for a in addresses]
                lastError = e.reply
                if e.tlsFailed and useTLS and not self.settings.require_tls:
                    # Opportunistic TLS (RFC 7435 §3): a failed handshake
                    # must not stop mail the host would take in plaintext.
                    attempts.insert(0, (host, port, False))
        return [Outcome(a, TEMPORARY, lastError) for a in addresses]

    def _tlsFor(self, host: str) -> Any:
        options = self._tlsOptions
        if options is None:
            from twisted.internet.ssl import CertificateOptions

            return CertificateOptions(verify=False)
        if callable(options) and not (hasattr(options, "getContext") or hasattr(options, "clientConnectionForTLS")):
            return options(host)
        return options

    @inlineCallbacks
    def _deliverTo(
        self,
        entry: QueueEntry,
        host: str,
        port: int,
        addresses: List[str],
        auth: Optional[Tuple[str, str]],
        useTLS: bool = True,
        closing: Optional[List[Deferred]] = None,
        domain: Optional[str] = None,
    ) -> Any:
        """
        One connection: this message, then (with C{domain}) other messages
        for the domain that wait for a slot.  With C{closing}, the
        outcomes come as soon as they are known and C{closing} gets the
        L{Deferred} that fires when the connection is closed.
        """
        try:
            message = yield self.queue.openMessage(entry.id)
        except EntryGone:
            raise HostFailure("451 4.3.0 the message left the queue") from None
        try:
            job = Job(
                heloName=self.hostname,
                sender=entry.sender,
                recipients=addresses,
                message=message,
                host=host,
                tls=self._tlsFor(host) if useTLS else None,
                requireTLS=self.settings.require_tls,
                auth=auth,
                eightBit=entry.eightbit,
            )
            if self._stopping:
                # No new connections once stopping began (the thread pool
                # that reads the message may be gone already).
                raise HostFailure("451 4.3.0 mailnet is stopping")
            more = None
            if domain is not None:
                more = lambda: self._more(domain, job)  # noqa: E731
            factory = RelayClientFactory(job, self._reactor, self.queue.run, more)
            connecting = self._connector(host, port, factory)
            self._connecting.add(connecting)
            try:
                client = yield connecting
            except Exception as e:
                raise HostFailure("451 4.4.1 cannot connect to %s:%d: %s" % (host, port, _reason(e))) from e
            finally:
                self._connecting.discard(connecting)
            self._clients.add(client)
            client.closed.addBoth(lambda _: self._clients.discard(client))
            if closing is not None and not self._stopping:
                closing.append(client.closed)
                outcomes = yield client.result
            else:
                # Stopping (the service waits for rounds, so a round must
                # include its connection's end), or no slot to hand over.
                outcomes = yield client.result
                yield client.closed
            return outcomes
        finally:
            message.close()

    @inlineCallbacks
    def _more(self, domain: str, first: Job) -> Any:
        """
        The next message for an open connection to C{domain}: a L{Job} for
        the longest-waiting one, or L{None}.
        """
        while not self._stopping:
            claimed = self._claim(domain)
            if claimed is None:
                return None
            leg, ride = claimed
            try:
                message = yield self.queue.openMessage(leg.entry.id)
            except Exception:
                ride.callback(None)  # gone or unreadable: its own round sorts it out
                continue
            done: Deferred = Deferred()
            done.addBoth(self._rode, ride, message, leg, first.host)
            return attr.evolve(
                first, sender=leg.entry.sender, recipients=leg.addresses, message=message, eightBit=leg.entry.eightbit, done=done
            )
        return None

    def _rode(self, result: Any, ride: Deferred, message: Any, leg: "_Leg", host: str) -> None:
        """A message carried on another's connection is done: its outcomes, or L{None} to go alone."""
        message.close()
        if not isinstance(result, Failure):
            ride.callback(result)
            return
        failure = result.value
        if isinstance(failure, HostFailure) and failure.permanent:
            log.info("{id}: {host} failed: {reply}", id=leg.entry.id, host=host, reply=failure.reply)
            ride.callback([Outcome(a, PERMANENT, failure.reply, host) for a in leg.addresses])
            return
        if not isinstance(failure, HostFailure):
            log.failure("{id}: delivery on a shared connection failed", result, id=leg.entry.id)
        # Not tried, or a temporary refusal: on its own, with every next hop.
        ride.callback(None)

    def _connectTCP(self, host: str, port: int, factory: Any) -> Deferred:
        endpoint = HostnameEndpoint(self._reactor, host, port, timeout=CONNECT_TIMEOUT)
        return endpoint.connect(factory)


@attr.s(auto_attribs=True, eq=False)
class _Leg:
    """One message's delivery to one domain, as it waits for a connection."""

    entry: QueueEntry
    addresses: List[str]
    #: It rode on a connection that broke: it goes alone now.
    rode: bool = False


@attr.s(frozen=True, auto_attribs=True)
class _Ride:
    """A slot request answered by an open connection: C{outcomes} fires when it is done."""

    outcomes: Deferred


def _permanentStatus(reply: str) -> str:
    status = statusFromReply(reply, True)
    if not status.startswith("5"):
        status = "5" + status[1:]
    return status
