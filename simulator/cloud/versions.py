"""Orders software versions the semver way: numeric components, then pre-release, then build."""

import re
from typing import Final, TypeAlias

from simulator.cloud.errors import InvalidVersion

MAX_VERSION_CHARS: Final = 128
_VERSION_PATTERN: Final = re.compile(
    r"v?(?P<numbers>\d{1,18}(?:\.\d{1,18})*)"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?",
    re.ASCII,
)

Identifier: TypeAlias = tuple[int, int, str]
"""One dot-separated label: numeric labels sort before alphanumeric ones, as in semver."""
VersionKey: TypeAlias = tuple[tuple[int, ...], tuple[int, tuple[Identifier, ...]], tuple[Identifier, ...]]
"""A sort key: `version_key(a) < version_key(b)` when a is older than b."""


def version_key(text: str) -> VersionKey:
    """The sort key of a version such as `1.2.3`, `v2.0`, `1.0.0-rc.1` or `1.2.3+45`.

    Trailing zero components do not count (`1.2` equals `1.2.0`); a pre-release sorts before its
    release; the build label (MCUboot's build number) breaks ties last, absent before present.

    Raises:
        InvalidVersion: the text is not such a version.
    """
    if len(text) > MAX_VERSION_CHARS:
        raise InvalidVersion(f"version longer than {MAX_VERSION_CHARS} characters")
    match = _VERSION_PATTERN.fullmatch(text)
    if match is None:
        raise InvalidVersion(f"{text!r} is not a version (expected numbers such as 1.2.3)")
    numbers = [int(part) for part in match["numbers"].split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    pre = match["pre"]
    release_rank = (1, ()) if pre is None else (0, _identifiers(pre))
    build = _identifiers(match["build"]) if match["build"] else ()
    return tuple(numbers), release_rank, build


def is_version(text: str) -> bool:
    """Whether `version_key` accepts the text."""
    try:
        version_key(text)
    except InvalidVersion:
        return False
    return True


def _identifiers(dotted: str) -> tuple[Identifier, ...]:
    return tuple(
        (0, int(label), "") if label.isdigit() and len(label) <= 18 else (1, 0, label)
        for label in dotted.split(".")
    )
