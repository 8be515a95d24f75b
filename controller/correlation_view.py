"""The standing fleet-wide correlation: each device's Memfault answer, kept fresh beside the scheduler.

The view runs on its own thread with its own asyncio loop, so Memfault's latency, retries and
`Retry-After` pauses never sit on the scheduler's loop. For every device it keeps the answer for
the exact (serial, hardware, software type, current version, project key) it was asked with. A
device is asked when the view first sees it or its tuple changes (an ingest batch that carried it,
a fleet scan every `scan_s`, planning, or a dispatch that found the answer stale), and again before
the answer's artifact links expire (Memfault's CDN links last 6 hours; `refresh_after_s` is well
below). The Memfault client's
own limits apply: `max_concurrency` requests in flight, a global `requests_per_s`, and a pause for
every query while a `Retry-After` runs. An outage (every query failing) is reported by `outage()`
and clears by itself with the first answer; nothing is counted against any device meanwhile.
Readers (planning, dispatch, metrics) only read the answers; none waits on Memfault, except a
planning task that waits beside the scheduler for the devices it plans while answers keep coming
(at most `plan_wait_s` without one, `plan_wait_max_s` in all).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import httpx
import structlog

from controller.correlation import DeviceFacts
from controller.errors import MemfaultRateLimited, MemfaultUnavailable
from controller.memfault import MemfaultClient
from controller.memfault_answers import DeviceQuery, ReleaseAnswer, Unanswered
from controller.memfault_transport import PooledAiohttpTransport
from controller.store.executor import StoreExecutor
from controller.store.fleet_store import FleetStore

log = structlog.get_logger("mcufleet.controller.correlation")


@dataclass(frozen=True, slots=True)
class CorrelationSettings:
    """How the view keeps its answers fresh."""

    refresh_after_s: float = 7200.0
    """Ask again after this long (artifact links expire after 6 h)."""
    unanswered_retry_s: float = 300.0
    """Ask again this soon a device whose answer was unusable (404, garbage, a lasting 5xx)."""
    sweep_s: float = 30.0
    """How often answers are checked for age."""
    scan_s: float = 600.0
    """How often the whole registry is read for devices whose tuple changed (0: never). Ingest tells
    the view of every batch's devices (`Ingest.on_facts`); the scan catches what it cannot: the
    share of reports another replica ingested, and devices changed while this view was stopped."""
    outage_retry_s: float = 5.0
    """How soon a query that met an outage is tried again (at least the server's Retry-After)."""
    plan_wait_s: float = 30.0
    """How long a planning task waits with no new answer for the devices it plans."""
    plan_wait_max_s: float = 600.0
    """How long a planning task waits for its devices' answers in all."""
    plan_max_age_s: float = 600.0
    """A plan uses answers younger than this (a release activated since shows up); older are asked again."""
    dispatch_max_age_s: float = 300.0
    """A dispatch uses an answer younger than this (an abort in Memfault shows up); older are asked again."""


@dataclass(frozen=True, slots=True)
class StandingAnswer:
    """Memfault's answer for one device, with the query it answers and when (view clock)."""

    asked: DeviceQuery
    answer: ReleaseAnswer
    answered_at_s: float


@dataclass(frozen=True, slots=True)
class Freshness:
    """How much of a set of devices the view has answered, and how old the oldest answer is."""

    devices: int
    answered: int
    oldest_age_s: float

    @property
    def answered_fraction(self) -> float:
        """Answered devices over devices (1.0 for none)."""
        return self.answered / self.devices if self.devices else 1.0


FACTS_CHUNK: Final = 500
"""Serials read per query by `read_facts` (below every database's bound on bound parameters)."""


def read_facts(
    store: FleetStore,
    software_type: str | None = None,
    serial: str | None = None,
    *,
    serials: Sequence[str] | None = None,
) -> list[DeviceFacts]:
    """The correlation facts of every device (of a software type, one serial, or these serials).

    Runs on the store thread. `serials` are read `FACTS_CHUNK` to a query, so the devices a step
    dispatches cost a few queries, not one each.
    """
    sql = (
        "SELECT d.serial, d.hardware_version, d.software_type, d.current_version, c.project_key,"
        " d.accepts_delta"
        " FROM device d LEFT JOIN credential c ON c.serial = d.serial"
    )
    queries: list[tuple[str, list[object]]] = []
    if serials is not None:
        for start in range(0, len(serials), FACTS_CHUNK):
            chunk = list(serials[start : start + FACTS_CHUNK])
            marks = ", ".join("?" * len(chunk))
            queries.append((f"{sql} WHERE d.serial IN ({marks})", list(chunk)))
    elif software_type is not None:
        queries.append((sql + " WHERE d.software_type = ?", [software_type]))
    elif serial is not None:
        queries.append((sql + " WHERE d.serial = ?", [serial]))
    else:
        queries.append((sql, []))
    facts: list[DeviceFacts] = []
    for query, params in queries:
        facts.extend(
            DeviceFacts(str(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4] or ""), bool(row[5]))
            for row in store.db.fetchall(query + " ORDER BY d.serial", params)
        )
    return facts


class CorrelationView:
    """Per-device Memfault answers, refreshed on a thread and loop of their own."""

    def __init__(
        self,
        memfault: MemfaultClient,
        settings: CorrelationSettings | None = None,
        *,
        scan: Callable[[], Awaitable[Sequence[DeviceFacts]]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        client: Callable[[], MemfaultClient] | None = None,
    ) -> None:
        """Ask Memfault with `memfault`'s settings, counting into its stats and latency histogram.

        The queries go through a client of the view's own, built on its loop by `client` (default:
        a new pooled httpx client with `memfault`'s settings); `scan` lists the fleet's facts.
        """
        self.settings = settings or CorrelationSettings()
        self.memfault = memfault
        self._build_client = client or (lambda: _own_client(memfault))
        self._scan = scan
        self._clock = clock
        self._lock = threading.Condition()
        self._wanted: dict[str, DeviceFacts] = {}
        self._answers: dict[str, StandingAnswer] = {}
        self._queued: set[str] = set()
        self._requested_at: dict[str, float] = {}
        """When a dispatch asked for a fresh answer, by serial (until one arrives and is used)."""
        self._outage = ""
        self._answered_at_s = float("-inf")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[str] | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the view's thread (idempotent)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="memfault-correlation", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop asking and end the thread."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    # --- writers (any thread) --------------------------------------------------------------------

    def observe(self, facts: Iterable[DeviceFacts]) -> None:
        """Learn devices' current facts; those with no answer for exactly these facts are asked."""
        due: list[str] = []
        with self._lock:
            for fact in facts:
                self._wanted[fact.serial] = fact
                known = self._answers.get(fact.serial)
                if fact.project_key and (known is None or known.asked != fact.query()):
                    due.append(fact.serial)
        self._enqueue(due)

    def refresh(self, facts: DeviceFacts) -> None:
        """Ask again for this device even if answered (its answer is too old for a dispatch)."""
        with self._lock:
            self._wanted[facts.serial] = facts
            self._requested_at.setdefault(facts.serial, self._clock())
        self._enqueue([facts.serial])

    def usable_for_dispatch(self, facts: DeviceFacts, max_age_s: float) -> StandingAnswer | None:
        """The device's answer when a dispatch may use it; None when it must be asked again.

        Usable: for exactly `facts`, and younger than `max_age_s` or arrived since a `refresh`
        asked for it (that request is then used up).
        """
        now = self._clock()
        with self._lock:
            answer = self._answers.get(facts.serial)
            if answer is None or answer.asked != facts.query():
                return None
            requested = self._requested_at.get(facts.serial)
            if requested is not None and answer.answered_at_s >= requested:
                del self._requested_at[facts.serial]
                return answer
            return answer if now - answer.answered_at_s <= max_age_s else None

    # --- readers (any thread) --------------------------------------------------------------------

    def answer(self, serial: str) -> StandingAnswer | None:
        """The device's latest answer (for whatever facts it was asked with)."""
        with self._lock:
            return self._answers.get(serial)

    def age_s(self, answer: StandingAnswer) -> float:
        """How old an answer is on the view's clock."""
        return self._clock() - answer.answered_at_s

    def outage(self) -> str:
        """Why Memfault is unavailable ("" when it answers)."""
        with self._lock:
            return self._outage

    def freshness(self, facts: Sequence[DeviceFacts] | None = None) -> Freshness:
        """Answered share and oldest answer age of these devices (default: every device seen)."""
        now = self._clock()
        with self._lock:
            chosen = list(self._wanted.values()) if facts is None else facts
            ages = [
                now - answer.answered_at_s
                for fact in chosen
                if (answer := self._answers.get(fact.serial)) is not None and answer.asked == fact.query()
            ]
        return Freshness(len(chosen), len(ages), max(ages, default=0.0))

    def ensure(
        self,
        facts: Sequence[DeviceFacts],
        max_age_s: float,
        stall_timeout_s: float,
        max_wait_s: float | None = None,
    ) -> bool:
        """Ask for every device without a recent answer for its facts, then wait for them all.

        Blocks (run it in a worker thread) until each device with a key has an answer for its facts
        younger than `max_age_s`; returns whether they all have. It gives up when no new answer
        came for `stall_timeout_s`, or after `max_wait_s` in all (default: `stall_timeout_s`): a
        cold 100k fleet takes minutes at Memfault's rate, and a plan made after a fixed wait would
        exclude most of it, while a Memfault that stopped answering ends the wait quickly.
        """
        wanted = [fact for fact in facts if fact.project_key]
        since = self._clock() - max_age_s

        def current(fact: DeviceFacts) -> bool:
            answer = self._answers.get(fact.serial)
            return answer is not None and answer.asked == fact.query() and answer.answered_at_s >= since

        with self._lock:
            for fact in wanted:
                self._wanted[fact.serial] = fact
            due = [fact.serial for fact in wanted if not current(fact)]
        self._enqueue(due)
        # Answers arrive roughly in the order asked: checking from the front keeps each wake-up cheap.
        asked = set(due)
        pending = deque(fact for fact in wanted if fact.serial in asked)

        def done() -> bool:
            while pending and current(pending[0]):
                pending.popleft()
            return not pending

        # Real time, not the view's clock: this is how long a thread blocks, as Condition counts it.
        deadline_s = time.monotonic() + (stall_timeout_s if max_wait_s is None else max_wait_s)
        with self._lock:
            while not done():
                budget_s = min(stall_timeout_s, deadline_s - time.monotonic())
                if budget_s <= 0 or not self._lock.wait_for(_shrinks(done, pending), budget_s):
                    return done()
            return True

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Block until `predicate()` holds, checked whenever an answer or an outage is noted."""
        with self._lock:
            return self._lock.wait_for(predicate, timeout_s)

    # --- the view's own loop ---------------------------------------------------------------------

    def _enqueue(self, serials: Iterable[str]) -> None:
        loop, queue = self._loop, self._queue
        with self._lock:
            fresh = [serial for serial in serials if serial not in self._queued]
            self._queued.update(fresh)
        if fresh and loop is not None and queue is not None and not loop.is_closed():
            for serial in fresh:
                loop.call_soon_threadsafe(queue.put_nowait, serial)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._stopping = asyncio.Event()
        with self._lock:
            # Devices observed before the loop existed.
            waiting, self._queued = set(self._queued), set()
        client = self._build_client()
        # Counted where the metrics read them, whichever client the view was given.
        client.stats, client.latency = self.memfault.stats, self.memfault.latency
        self._ready.set()
        self._enqueue(waiting)
        workers = [
            asyncio.create_task(self._worker(client), name=f"correlation-worker-{index}")
            for index in range(max(1, client.settings.max_concurrency))
        ]
        sweeper = asyncio.create_task(self._sweep(), name="correlation-sweep")
        try:
            await self._stopping.wait()
        finally:
            for task in [*workers, sweeper]:
                task.cancel()
            await asyncio.gather(*workers, sweeper, return_exceptions=True)
            await client.aclose()

    async def _worker(self, client: MemfaultClient) -> None:
        assert self._queue is not None  # noqa: S101 (set before workers start)
        while True:
            serial = await self._queue.get()
            with self._lock:
                self._queued.discard(serial)
                facts = self._wanted.get(serial)
            if facts is None or not facts.project_key:
                continue
            query = facts.query()
            started_s = self._clock()
            try:
                answer = await client.latest_release(query, fresh=True)
            except MemfaultRateLimited as limited:
                # The limit is this device's: it keeps its answer and is asked when the limit allows.
                asyncio.get_running_loop().call_later(
                    min(max(limited.retry_after_s, 0.1), 3600.0), self._enqueue, [serial]
                )
                continue
            except MemfaultUnavailable as error:
                if not await self._others_answered(client, serial):
                    self._note_outage(error, serial, started_s)
                    continue
                try:
                    # Memfault answers another device now: ask once more, so that a failure that
                    # began in an outage which just ended is not taken for this device's own.
                    answer = await client.latest_release(query, fresh=True)
                except MemfaultUnavailable as again:
                    answer = _device_failure(again)
                    unanswered = client.stats.unanswered_by_reason
                    unanswered[answer.reason] = unanswered.get(answer.reason, 0) + 1
            except Exception as error:  # noqa: BLE001 (one device's surprise never stops the view)
                answer = Unanswered("client_error", f"{type(error).__name__}: {error}"[:200])
            self._note_answer(query, answer)

    def _note_answer(self, query: DeviceQuery, answer: ReleaseAnswer) -> None:
        """Keep an answer; any answer ends an outage."""
        with self._lock:
            if self._outage:
                log.info("memfault answers again")
            self._outage = ""
            self._answered_at_s = self._clock()
            self._answers[query.device_serial] = StandingAnswer(query, answer, self._answered_at_s)
            self._lock.notify_all()

    async def _others_answered(self, client: MemfaultClient, failed: str) -> bool:
        """Whether Memfault answers another device now: ask one that was answered before (a probe)."""
        with self._lock:
            probe = next(
                (
                    self._wanted[serial]
                    for serial, standing in self._answers.items()
                    if serial != failed
                    and serial in self._wanted
                    and not isinstance(standing.answer, Unanswered)
                    and self._wanted[serial].project_key
                ),
                None,
            )
        if probe is None:
            return False
        try:
            answer = await client.latest_release(probe.query(), fresh=True)
        except MemfaultUnavailable:
            return False
        self._note_answer(probe.query(), answer)
        return True

    def _note_outage(self, error: MemfaultUnavailable, serial: str, started_s: float) -> None:
        """Memfault answers nobody: say so (unless it answered since this query began), ask again later."""
        with self._lock:
            if self._answered_at_s < started_s:
                if not self._outage:
                    log.warning("memfault unavailable", error=str(error))
                self._outage = str(error)[:200] or "memfault unavailable"
                self._lock.notify_all()
        loop = asyncio.get_running_loop()
        delay_s = max(self.settings.outage_retry_s, min(error.retry_after_s, 3600.0))
        loop.call_later(delay_s, self._enqueue, [serial])

    async def _sweep(self) -> None:
        last_scan = float("-inf")
        while True:
            await asyncio.sleep(self.settings.sweep_s)
            now = self._clock()
            if self._scan is not None and self.settings.scan_s and now - last_scan >= self.settings.scan_s:
                last_scan = now
                try:
                    self.observe(await self._scan())
                except Exception as error:  # noqa: BLE001 (a failed scan is retried at the next sweep)
                    log.warning("fleet scan failed", error=str(error))
            with self._lock:
                due = [
                    serial
                    for serial, answer in self._answers.items()
                    if serial in self._wanted
                    and now - answer.answered_at_s
                    >= (
                        self.settings.unanswered_retry_s
                        if isinstance(answer.answer, Unanswered)
                        else self.settings.refresh_after_s
                    )
                ]
            self._enqueue(due)


def _shrinks(done: Callable[[], bool], pending: deque[DeviceFacts]) -> Callable[[], bool]:
    """A wait predicate: everything answered, or at least one more answer than now."""
    left = len(pending)
    return lambda: done() or len(pending) < left


def _device_failure(error: MemfaultUnavailable) -> Unanswered:
    """One device's lasting failure as an answer (`http_500`, or `transport_error`)."""
    message = str(error)
    code = message.removeprefix("HTTP ")
    reason = f"http_{code}" if message.startswith("HTTP ") and code.isdigit() else "transport_error"
    return Unanswered(reason, message[:200])


def _own_client(like: MemfaultClient) -> MemfaultClient:
    """A client for the view's loop with `like`'s settings, on aiohttp's pool unless one was injected."""
    settings = like.settings
    max_connections = max(2, settings.max_concurrency * 2)
    transport = like.transport or PooledAiohttpTransport(max_connections)
    http = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=max_connections), transport=transport, follow_redirects=False
    )
    return MemfaultClient(settings, http)


def store_scan(store: FleetStore, executor: StoreExecutor) -> Callable[[], Awaitable[Sequence[DeviceFacts]]]:
    """A fleet scan for the view: `read_facts` on the store thread, awaited on the view's loop."""

    async def scan() -> Sequence[DeviceFacts]:
        return await executor.call(read_facts, store)

    return scan
