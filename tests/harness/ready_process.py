"""A server binary started for one test and held until its HTTP readiness URL answers 200.

Prometheus and Alertmanager both serve `/-/ready`; the test gets the server only once it is ready,
sees its log when it exits or never gets ready, and the process is stopped (then killed) at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Final

import httpx

from tests.integration.world import wait_until

STOP_WAIT_S: Final = 20.0


@contextlib.asynccontextmanager
async def ready_process(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    ready_url: str,
    http: httpx.AsyncClient,
    timeout_s: float,
) -> AsyncIterator[None]:
    """Run `argv` (output to `log_path`) until the block ends; enter once `ready_url` answers 200."""
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=subprocess.STDOUT)
    try:

        async def ready() -> bool:
            if process.returncode is not None:
                raise AssertionError(f"{name} exited:\n{_text(log_path)}")
            with contextlib.suppress(httpx.TransportError):
                return (await http.get(ready_url)).status_code == 200
            return False

        try:
            await wait_until(ready, timeout_s=timeout_s, poll_s=0.1)
        except TimeoutError:
            raise AssertionError(f"{name} not ready:\n{_text(log_path)}") from None
        yield
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_WAIT_S)
        except TimeoutError:
            process.kill()
            await process.wait()


def _text(log_path: Path) -> str:
    return log_path.read_text(errors="replace")
