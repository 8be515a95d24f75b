"""The public surface of `simulator.cloud` is exactly its `__all__`."""

import types

import simulator.cloud


def test_all_lists_every_public_name_and_nothing_else() -> None:
    """Every public non-module attribute is in __all__, every entry exists, and __all__ is sorted."""
    public = {
        name
        for name in dir(simulator.cloud)
        if not name.startswith("_") and not isinstance(getattr(simulator.cloud, name), types.ModuleType)
    }
    assert set(simulator.cloud.__all__) == public
    assert simulator.cloud.__all__ == sorted(simulator.cloud.__all__)
