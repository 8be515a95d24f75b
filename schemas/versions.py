"""The one order of firmware versions, shared by agent, controller and simulator.

Rules of this file (pure: no I/O, no clock):

- A version is `[v]major[.minor[.revision[.build]]][-pre-release][+build]`. MCUboot stores
  `major.minor.revision+build`; Zephyr's img_mgmt reports it as `major.minor.revision.build` (the
  build only when it is not 0), imgtool takes `major.minor.revision+build`: both spellings are the
  same version. Missing numbers are 0 (`1.2` is `1.2.0`, `1.2.3` is `1.2.3.0`).
- A pre-release (`-rc.1`) sorts before the release it precedes, and pre-releases compare label by
  label the semantic-versioning way: numeric labels as numbers (`rc.9` < `rc.10`), numeric before
  alphanumeric, alphanumeric as ASCII text, a shorter run of equal labels first.
- The build number breaks ties last, as MCUboot's `BOOT_VERSION_CMP_USE_BUILD_NUMBER` does.
  Build metadata that is not a number (`+abc`, `+g1234abc.dirty`) does not take part in the order,
  as semantic versioning says: `1.2.3+abc` is the same version as `1.2.3`.
- A leading `v` (`v1.2.3`, as Memfault and git tags often spell it) is tolerated.
- Anything else cannot be ordered and raises `InvalidVersion`: each caller decides what an
  unorderable version means (the controller excludes the device with the reason, the agent rejects
  the job, the cloud emulator answers 400).

Hand-written because no maintained library orders both spellings: `packaging.version` is PEP 440
(`1.0.0-rc.10` parses, but `1.0.0-alpha.beta` does not), `semver` refuses `1.2` and `1.2.3.4`.
"""

from __future__ import annotations

import functools
import re
from typing import Final, NamedTuple, TypeAlias

from schemas.errors import ContractError

MAX_VERSION_CHARS: Final = 128
MAX_NUMBER_DIGITS: Final = 18
"""Keeps every number an exact int without unbounded parsing of hostile text."""
_VERSION: Final = re.compile(
    r"[vV]?(?P<numbers>\d{1,18}(?:\.\d{1,18}){0,3})"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?",
    re.ASCII,
)

Label: TypeAlias = tuple[int, int, str]
"""One pre-release label: `(0, number, "")` for a numeric label, `(1, 0, text)` for any other."""


class InvalidVersion(ContractError):
    """A version string that cannot be ordered; the message says what is wrong with it."""


class VersionKey(NamedTuple):
    """A sort key: `version_key(a) < version_key(b)` exactly when a is older than b."""

    release: tuple[int, int, int]
    """major, minor, revision."""
    pre_release: tuple[int, tuple[Label, ...]]
    """`(0, labels)` for a pre-release, `(1, ())` for the release (which sorts after)."""
    build: int
    """MCUboot's build number (0 when absent)."""


@functools.lru_cache(maxsize=4096)  # a fleet runs few distinct versions; planning asks 6 per device
def version_key(text: str) -> VersionKey:
    """The sort key of a version such as `1.2.3`, `v2.0`, `1.0.0-rc.10`, `1.2.3+45` or `1.2.3.45`.

    Raises:
        InvalidVersion: the text is not a version (the message quotes at most 40 characters of it).
    """
    if len(text) > MAX_VERSION_CHARS:
        raise InvalidVersion(f"version longer than {MAX_VERSION_CHARS} characters")
    match = _VERSION.fullmatch(text)
    if match is None:
        raise InvalidVersion(
            f"{text[:40]!r} is not a version (expected up to four numbers such as 1.2.3 or 1.2.3.4, "
            "an optional -pre.release and +build)"
        )
    numbers = [int(part) for part in match["numbers"].split(".")]
    numbers += [0] * (4 - len(numbers))
    build = match["build"]
    if build is not None and build.isdigit():
        if len(build) > MAX_NUMBER_DIGITS:
            raise InvalidVersion(f"{text[:40]!r} has a build number longer than {MAX_NUMBER_DIGITS} digits")
        if len(match["numbers"].split(".")) == 4:
            raise InvalidVersion(f"{text[:40]!r} gives the build number twice (.{numbers[3]} and +{build})")
        numbers[3] = int(build)
    pre = match["pre"]
    labels = () if pre is None else tuple(_label(label) for label in pre.split("."))
    if any(label[0] == 0 and label[1] < 0 for label in labels):
        raise InvalidVersion(f"{text[:40]!r} has a pre-release number longer than {MAX_NUMBER_DIGITS} digits")
    rank = (1, ()) if pre is None else (0, labels)
    return VersionKey((numbers[0], numbers[1], numbers[2]), rank, numbers[3])


def is_version(text: str) -> bool:
    """Whether `version_key` orders the text."""
    try:
        version_key(text)
    except InvalidVersion:
        return False
    return True


def same_version(left: str, right: str) -> bool:
    """Whether two spellings name one version (`1.2.3+4`, `v1.2.3.4`); unorderable text equals only itself."""
    try:
        return version_key(left) == version_key(right)
    except InvalidVersion:
        return left == right


def _label(label: str) -> Label:
    if not label.isdigit():
        return (1, 0, label)
    # A number too long to be exact is marked -1 so that version_key can refuse the whole text.
    return (0, int(label) if len(label) <= MAX_NUMBER_DIGITS else -1, "")
