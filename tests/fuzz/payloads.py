"""Hostile payloads: hypothesis-generated garbage and mutations of valid messages.

Hypothesis draws them once per test through a collecting `@given` function (the system under
test is a set of long-running processes, not a pure function, so examples are gathered first and
then sent). Only payloads the contract refuses are kept, so every one of them must be counted as
rejected.
"""

from __future__ import annotations

import json
from typing import TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import ContractError, TopicKind, channels

T = TypeVar("T")
_JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
JSON_VALUES = st.recursive(
    _JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    """Bit flips, truncations, type swaps, unknown fields and oversize strings of one valid payload."""
    document = json.loads(valid)
    keys = sorted(document)

    def flip(position: int, bit: int) -> bytes:
        data = bytearray(valid)
        data[position % len(data)] ^= 1 << bit
        return bytes(data)

    def swap_type(key: str, value: object) -> bytes:
        return json.dumps({**document, key: value}).encode()

    return st.one_of(
        st.builds(flip, st.integers(0, len(valid) - 1), st.integers(0, 7)),
        st.integers(1, len(valid) - 1).map(lambda cut: valid[:cut]),
        st.builds(swap_type, st.sampled_from(keys), JSON_VALUES),
        st.text(min_size=1, max_size=12).map(lambda key: json.dumps({**document, f"x_{key}": 1}).encode()),
        st.builds(swap_type, st.sampled_from(keys), st.just("A" * 70_000)),
        st.sampled_from(keys).map(
            lambda key: json.dumps({k: v for k, v in document.items() if k != key}).encode()
        ),
    )


def _without(document: dict[str, object], key: str) -> dict[str, object]:
    return {k: v for k, v in document.items() if k != key}


def hostile(valid: bytes) -> st.SearchStrategy[bytes]:
    """Raw garbage, arbitrary JSON and mutations of `valid`."""
    return st.one_of(
        st.binary(min_size=1, max_size=400),
        JSON_VALUES.map(lambda value: json.dumps(value).encode()),
        mutations(valid),
    )


def drawn(strategy: st.SearchStrategy[T], count: int) -> list[T]:
    """`count` examples of `strategy`, drawn once and reproducibly (derandomized)."""
    found: list[T] = []

    @settings(
        max_examples=count,
        database=None,
        derandomize=True,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: T) -> None:
        found.append(example)

    collect()
    return found


def refused(kind: TopicKind, valid: bytes, count: int) -> list[bytes]:
    """`count` distinct hostile payloads for `kind` that the contract's decoder refuses."""
    found = list(dict.fromkeys(p for p in drawn(hostile(valid), count * 8) if _is_refused(kind, p)))
    assert len(found) >= count, f"only {len(found)} refused payloads for {kind}"
    return found[:count]


def _is_refused(kind: TopicKind, payload: bytes) -> bool:
    try:
        channels.decode(kind, payload)
    except ContractError:
        return True
    return False
