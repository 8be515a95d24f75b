"""The rebirth token buckets: a gateway's interval, the fleet's rate and burst, never more than allowed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controller.rebirth_limit import RebirthLimiter, TokenBucket


def test_a_bucket_starts_full_and_refills_at_its_rate() -> None:
    """Two tokens spent at once, the third only after 1/rate seconds."""
    bucket = TokenBucket(2.0, 0.5)
    assert bucket.take(0.0) and bucket.take(0.0)
    assert not bucket.take(1.9)
    assert bucket.take(2.0)


def test_a_gateway_is_asked_once_per_interval() -> None:
    """The second request of one gateway waits for its interval; other gateways are not held back."""
    limiter = RebirthLimiter(per_gateway_interval_s=30.0, fleet_per_s=100.0, fleet_burst=100)
    assert limiter.admit("gw-1", 0.0)
    assert not limiter.admit("gw-1", 29.0)
    assert limiter.admit("gw-2", 29.0)
    assert limiter.admit("gw-1", 30.0)


def test_a_refused_request_takes_no_token_from_the_other_bucket() -> None:
    """A gateway held by its own interval does not spend the fleet's tokens."""
    limiter = RebirthLimiter(per_gateway_interval_s=30.0, fleet_per_s=1e-9, fleet_burst=2)
    assert limiter.admit("gw-1", 0.0)
    for _ in range(10):
        assert not limiter.admit("gw-1", 1.0)
    assert limiter.admit("gw-2", 1.0)
    assert not limiter.fleet_available(1.0)


@given(
    requests=st.lists(
        st.tuples(st.integers(0, 20), st.floats(0, 0.5, allow_nan=False)), min_size=1, max_size=300
    ),
    burst=st.integers(1, 10),
    rate=st.floats(0.1, 10.0),
)
def test_admissions_never_exceed_either_bucket(
    requests: list[tuple[int, float]], burst: int, rate: float
) -> None:
    """Over any span, the fleet admits at most burst + rate * span and each gateway one per interval."""
    interval_s = 5.0
    limiter = RebirthLimiter(per_gateway_interval_s=interval_s, fleet_per_s=rate, fleet_burst=burst)
    now_s = 0.0
    admitted: list[tuple[int, float]] = []
    for gateway, step_s in requests:
        now_s += step_s
        if limiter.admit(f"gw-{gateway}", now_s):
            admitted.append((gateway, now_s))
    assert len(admitted) <= burst + rate * now_s + 1e-6
    last: dict[int, float] = {}
    for gateway, at_s in admitted:
        assert gateway not in last or at_s - last[gateway] >= interval_s - 1e-6
        last[gateway] = at_s


def test_gateway_buckets_stay_bounded() -> None:
    """Hostile gateway ids cannot grow the limiter without bound: full buckets are forgotten."""
    limiter = RebirthLimiter(
        per_gateway_interval_s=1.0, fleet_per_s=1e9, fleet_burst=1_000_000, max_gateways=100
    )
    for index in range(1000):
        limiter.admit(f"gw-{index}", float(index))
    assert limiter.gateways_tracked <= 101
