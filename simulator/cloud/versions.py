"""The emulator's use of the one version order (`schemas.versions`), its error made a `ModelError`.

The emulator answers a bad version with 400 like every other broken rule of its model, so the
contract's `InvalidVersion` becomes the emulator's own (a `ModelError`) here and nowhere else.
"""

from schemas import versions
from schemas.versions import VersionKey, is_version
from simulator.cloud.errors import InvalidVersion

__all__ = ["VersionKey", "is_version", "version_key"]


def version_key(text: str) -> VersionKey:
    """`schemas.versions.version_key`.

    Raises:
        InvalidVersion: the text cannot be ordered.
    """
    try:
        return versions.version_key(text)
    except versions.InvalidVersion as error:
        raise InvalidVersion(str(error)) from None
