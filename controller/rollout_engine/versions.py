"""Version ordering for rollout decisions: numeric components compare as numbers."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"\d+")


def version_key(version: str) -> tuple[tuple[int, ...], str]:
    """A sort key: the numbers of the release part, then the text (never raises on odd input)."""
    core = version.split("+", 1)[0]
    release, _, prerelease = core.partition("-")
    numbers = tuple(int(n) for n in _NUMBER.findall(release))
    numbers += (0,) * (4 - len(numbers))  # 1.2 == 1.2.0 == 1.2.0.0
    # A release sorts after its pre-releases: "" (release) must come after any pre-release tag.
    return numbers, prerelease or "\uffff"
