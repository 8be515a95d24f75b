"""Rate limits on rebirth requests: a token bucket per gateway and one for the whole fleet (pure).

A rebirth makes a gateway republish every report and credential it holds, so a controller that asks
too often (a gap in every burst, keys that arrive late) multiplies its own ingest load: at 100k
devices the old fixed interval per gateway still produced 7,562 rebirths. Both buckets must hold a
token for a request to leave; the time is an argument, never read here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    """`capacity` tokens, refilled at `rate_per_s`; starts full."""

    capacity: float
    rate_per_s: float
    tokens: float = -1.0
    updated_s: float | None = None

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.capacity

    def available(self, now_s: float) -> bool:
        """Whether a token is there at `now_s` (refills first; takes nothing)."""
        if self.updated_s is not None and now_s > self.updated_s:
            self.tokens = min(self.capacity, self.tokens + (now_s - self.updated_s) * self.rate_per_s)
        if self.updated_s is None or now_s > self.updated_s:
            self.updated_s = now_s
        return self.tokens >= 1.0

    def take(self, now_s: float) -> bool:
        """Take one token if there is one at `now_s`."""
        if not self.available(now_s):
            return False
        self.tokens -= 1.0
        return True


class RebirthLimiter:
    """Admits a rebirth request only when its gateway's bucket and the fleet's bucket both allow it."""

    def __init__(
        self,
        *,
        per_gateway_interval_s: float,
        fleet_per_s: float,
        fleet_burst: int,
        max_gateways: int = 100_000,
    ) -> None:
        """One request per gateway per `per_gateway_interval_s`; `fleet_per_s` after a `fleet_burst`."""
        self._per_gateway_interval_s = per_gateway_interval_s
        self._fleet = TokenBucket(float(fleet_burst), fleet_per_s)
        self._gateways: dict[str, TokenBucket] = {}
        self._max_gateways = max_gateways

    def admit(self, gateway_id: str, now_s: float, *, fleet_only: bool = False) -> bool:
        """Take a token from both buckets, or from neither; returns whether the request may leave.

        `fleet_only` skips the gateway's bucket (a fleet-wide event, such as a replica's death, that
        a gateway's recent rebirth did not cover); the fleet's bucket still applies.
        """
        if fleet_only:
            return self._fleet.take(now_s)
        bucket = self._gateways.get(gateway_id)
        if bucket is None:
            if len(self._gateways) >= self._max_gateways:
                # Bounded memory under hostile gateway ids: forget buckets that are full again.
                self._gateways = {g: b for g, b in self._gateways.items() if not _full(b, now_s)}
            bucket = TokenBucket(1.0, 1.0 / self._per_gateway_interval_s)
            self._gateways[gateway_id] = bucket
        if not bucket.available(now_s) or not self._fleet.available(now_s):
            return False
        bucket.take(now_s)
        self._fleet.take(now_s)
        return True

    @property
    def gateways_tracked(self) -> int:
        """Gateways with a bucket in memory."""
        return len(self._gateways)

    def fleet_available(self, now_s: float) -> bool:
        """Whether the fleet bucket holds a token (callers stop scanning their queue when not)."""
        return self._fleet.available(now_s)


def _full(bucket: TokenBucket, now_s: float) -> bool:
    bucket.available(now_s)
    return bucket.tokens >= bucket.capacity
