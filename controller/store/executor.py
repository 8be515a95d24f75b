"""One worker thread per store: database calls leave the event loop but never run concurrently.

Both drivers are synchronous and one connection must not be used by two threads at once; a
single-thread executor keeps the calls ordered and off the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class StoreExecutor:
    """Runs store calls one at a time on a dedicated thread."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    async def call(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `function(*args, **kwargs)` on the store thread and await its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: function(*args, **kwargs))

    def shutdown(self) -> None:
        """Finish queued calls and stop the thread."""
        self._pool.shutdown(wait=True)
