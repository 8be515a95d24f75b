"""The public surface of `schemas` is exactly its `__all__` (httpx's test_exported_members)."""

import schemas


def test_all_lists_every_public_name_and_nothing_else() -> None:
    """Every public attribute is in __all__, every __all__ entry exists, and __all__ is sorted."""
    public = {name for name in dir(schemas) if not name.startswith("_")}
    modules = {
        "asyncapi",
        "channels",
        "errors",
        "ids",
        "inventory",
        "jobs",
        "operator",
        "presence",
        "rollout",
        "topics",
        "versions",
    }
    assert set(schemas.__all__) == public - modules
    assert schemas.__all__ == sorted(schemas.__all__, key=lambda n: (not n.isupper(), n))
