"""The public surface of `simulator.device` is exactly its `__all__`."""

import types

import simulator.device


def test_all_lists_every_public_name_and_nothing_else() -> None:
    """Every public non-module attribute is in __all__, every entry exists, and __all__ is sorted."""
    public = {
        name
        for name in dir(simulator.device)
        if not name.startswith("_") and not isinstance(getattr(simulator.device, name), types.ModuleType)
    }
    assert set(simulator.device.__all__) == public
    assert simulator.device.__all__ == sorted(simulator.device.__all__)
