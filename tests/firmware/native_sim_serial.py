"""A real Zephyr `smp_server` built for native_sim: a 32-bit Linux process whose UART is a host pty.

No emulator, so it starts in milliseconds; it is how the serial transport meets real firmware
without QEMU. Its pty has no baud pacing: a burst of more than two console lines at once overruns
the default builds' UART RX pool (the `bigrx` build enlarges it), which a paced real UART would not.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from tests.firmware.fixtures import FirmwareBuild, FirmwareMissing

START_TIMEOUT_S: Final = 20.0
_PTY: Final = re.compile(rb"connected to pseudotty: (\S+)")


def _scratch_copy(build: FirmwareBuild) -> Path:
    """The executable, copied into a fresh directory (its flash file is written beside it)."""
    if not Path("/lib/ld-linux.so.2").exists() and not Path("/lib32/ld-linux.so.2").exists():
        raise FirmwareMissing("the 32-bit loader is missing: run `make firmware-deps` (libc6-i386)")
    workdir = Path(tempfile.mkdtemp(prefix="mcufleet-native-sim-"))
    executable = workdir / build.artifact.name
    shutil.copyfile(build.artifact, executable)
    executable.chmod(0o755)
    return executable


@contextlib.asynccontextmanager
async def running_native_sim(build: FirmwareBuild) -> AsyncIterator[str]:
    """Run the build in a scratch directory (it writes its flash file there); yield its pty path."""
    executable = _scratch_copy(build)
    workdir = executable.parent
    process = await asyncio.create_subprocess_exec(
        str(executable),
        cwd=workdir,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    drain: asyncio.Task[None] | None = None
    try:
        assert process.stdout is not None
        stdout = process.stdout
        async with asyncio.timeout(START_TIMEOUT_S):
            while True:
                line = await stdout.readline()
                if not line:
                    raise RuntimeError(f"{build.artifact.name} exited before opening its pty")
                if match := _PTY.search(line):
                    break

        async def discard_output() -> None:
            while await stdout.read(4096):
                pass

        drain = asyncio.create_task(discard_output(), name="native-sim-output")
        yield match.group(1).decode()
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        if drain is not None:
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)
        shutil.rmtree(workdir, ignore_errors=True)
