"""The standing correlation view on its own thread: per-device faults, outages and recovery."""

import threading
from collections.abc import Callable

import httpx

from controller.correlation import DeviceFacts
from controller.correlation_view import CorrelationSettings, CorrelationView
from controller.memfault import MemfaultClient, MemfaultSettings
from controller.memfault_answers import Unanswered, UpToDate

WAIT_S = 10.0
SETTINGS = MemfaultSettings(base_url="https://api.test", max_retries=1, backoff_initial_s=0.01)


def _facts(serial: str) -> DeviceFacts:
    return DeviceFacts(serial, "hw", "app", "1.0.0", "key")


def _view(handler: Callable[[httpx.Request], httpx.Response]) -> CorrelationView:
    shared = MemfaultClient(SETTINGS, httpx.AsyncClient())
    view = CorrelationView(
        shared,
        CorrelationSettings(outage_retry_s=0.05),
        client=lambda: MemfaultClient(SETTINGS, httpx.AsyncClient(transport=httpx.MockTransport(handler))),
    )
    view.start()
    return view


def test_a_device_answered_500_is_unanswered_while_others_are_answered() -> None:
    """One serial's lasting 500 excludes only it (a probe of another device proves Memfault is up)."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500 if request.url.params["device_serial"] == "BAD" else 204)

    view = _view(handler)
    try:
        assert view.ensure([_facts("GOOD")], max_age_s=60.0, stall_timeout_s=WAIT_S)
        assert view.ensure([_facts("BAD")], max_age_s=60.0, stall_timeout_s=WAIT_S)
        bad, good = view.answer("BAD"), view.answer("GOOD")
        assert bad is not None and bad.answer == Unanswered("http_500", "HTTP 500")
        assert good is not None and isinstance(good.answer, UpToDate)
        assert view.outage() == ""
        assert view.memfault.stats.unanswered_by_reason == {"http_500": 1}
        assert view.freshness().answered_fraction == 1.0
    finally:
        view.close()


def test_an_outage_is_reported_and_clears_by_itself() -> None:
    """500s for everyone are an outage (no device answered); when Memfault is back it clears unasked."""
    healthy = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(204 if healthy.is_set() else 500)

    view = _view(handler)
    try:
        view.observe([_facts("A"), _facts("B")])
        assert view.wait_until(lambda: bool(view.outage()), WAIT_S)
        assert view.answer("A") is None and view.answer("B") is None
        healthy.set()
        assert view.ensure([_facts("A"), _facts("B")], max_age_s=60.0, stall_timeout_s=WAIT_S)
        assert view.outage() == ""
        assert view.memfault.stats.unanswered_by_reason == {}
    finally:
        view.close()


def test_a_dispatch_uses_an_answer_that_arrived_since_it_asked() -> None:
    """With no age allowance, a dispatch waits for the answer its refresh asked for, then uses it once."""
    view = _view(lambda _request: httpx.Response(204))
    try:
        facts = _facts("A")
        assert view.usable_for_dispatch(facts, max_age_s=0.0) is None
        view.refresh(facts)
        assert view.wait_until(lambda: view.answer("A") is not None, WAIT_S)
        assert view.usable_for_dispatch(facts, max_age_s=0.0) is not None
        assert view.usable_for_dispatch(facts, max_age_s=0.0) is None
    finally:
        view.close()


def test_a_plan_waits_while_answers_keep_coming_and_stops_when_they_stall() -> None:
    """Slow but steady answers outlast the stall timeout in all; a Memfault gone quiet ends the wait."""
    quiet = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params["device_serial"].startswith("QUIET"):
            quiet.wait(WAIT_S)
        else:
            # One at a time (max_concurrency 1 below): eight answers take 1.2 s, four stall timeouts.
            threading.Event().wait(0.15)
        return httpx.Response(204)

    slow = MemfaultSettings(base_url="https://api.test", max_retries=0, max_concurrency=1, timeout_s=30.0)
    view = CorrelationView(
        MemfaultClient(slow, httpx.AsyncClient()),
        CorrelationSettings(),
        client=lambda: MemfaultClient(slow, httpx.AsyncClient(transport=httpx.MockTransport(handler))),
    )
    view.start()
    try:
        steady = [_facts(f"S{index}") for index in range(8)]
        assert view.ensure(steady, max_age_s=60.0, stall_timeout_s=0.3, max_wait_s=WAIT_S)
        assert view.freshness(steady).answered == 8
        # Past the overall bound, the wait ends even though answers were still coming.
        more = [_facts(f"M{index}") for index in range(8)]
        assert not view.ensure(more, max_age_s=60.0, stall_timeout_s=0.3, max_wait_s=0.4)
        # No answer at all for the stall timeout ends the wait long before the overall bound.
        assert not view.ensure([_facts("QUIET-1")], max_age_s=60.0, stall_timeout_s=0.3, max_wait_s=WAIT_S)
    finally:
        quiet.set()
        view.close()
