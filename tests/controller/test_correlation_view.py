"""The standing correlation view on its own thread: per-device faults, outages and recovery."""

import threading
from collections.abc import Callable

import httpx

from controller.correlation import DeviceFacts
from controller.correlation_view import CorrelationSettings, CorrelationView
from controller.memfault import MemfaultClient, MemfaultSettings
from controller.releases import Unanswered, UpToDate

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
        assert view.ensure([_facts("GOOD")], max_age_s=60.0, timeout_s=WAIT_S)
        assert view.ensure([_facts("BAD")], max_age_s=60.0, timeout_s=WAIT_S)
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
        assert view.ensure([_facts("A"), _facts("B")], max_age_s=60.0, timeout_s=WAIT_S)
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
