"""Start and stop a real Zephyr `native_sim_udp` build, each in its own network namespace.

The build binds UDP port 1337 on the host through Zephyr's offloaded sockets, so two instances
would collide in one namespace. Each instance runs under `unshare -n` with only loopback up. The
test process reaches it without a relay: `socket_factory()` creates a UDP socket *inside* the
instance's namespace (a short-lived thread enters it with setns(2); a socket keeps the namespace it
was created in), and the asyncio loop then uses that socket like any other. No extra process, no
extra hop, no timing of its own between the client and the device, which matters for the buffer
pool measurements. (Tools that open their own sockets, like smpclient's own tests, run whole in a
namespace of their own instead: tests/firmware/test_calibration_smpclient.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from tests.firmware.fixtures import FirmwareBuild, build

UDP_BUILD: Final = "zephyr_4.4.0_smp_server_0eae053d_native_sim_udp.exe"
SMP_PORT: Final = 1337
READY_PATTERN: Final = re.compile(r"smp_udp: Started")
"""What the UDP builds log once their socket is bound."""
NO_BUFFER_PATTERN: Final = "Failed to allocate mcumgr buffer"
"""What Zephyr logs when a datagram finds the net_buf pool empty (smp_udp.c) and drops it."""
START_TIMEOUT_S: Final = 20.0
_CLONE_NEWNET: Final = 0x40000000
_ANSI: Final = re.compile(r"\x1b\[[0-9;]*m")


class NativeSimError(RuntimeError):
    """The build did not start, or its namespace could not be entered."""


def _libc_setns(fd: int, nstype: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def socket_in_namespace(netns_path: str, family: int = socket.AF_INET) -> socket.socket:
    """A non-blocking UDP socket created inside the network namespace at `netns_path`.

    setns(2) for a network namespace changes only the calling thread, so a throwaway thread enters
    the namespace, creates the socket and ends; the socket stays in that namespace for its life.
    """
    made: list[socket.socket] = []
    failure: list[BaseException] = []

    def create() -> None:
        try:
            with open(netns_path, "rb") as namespace:
                _libc_setns(namespace.fileno(), _CLONE_NEWNET)
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            made.append(sock)
        except Exception as error:  # noqa: BLE001 - handed to the caller's thread below
            failure.append(error)

    thread = threading.Thread(target=create, name="enter-netns")
    thread.start()
    thread.join()
    if failure:
        raise NativeSimError(f"cannot create a socket in {netns_path}: {failure[0]}") from failure[0]
    return made[0]


@dataclass
class NativeSimUdp:
    """One running native_sim_udp build: its namespace, its log, and sockets that reach it."""

    build: FirmwareBuild
    process: asyncio.subprocess.Process
    log_lines: list[str] = field(default_factory=list)
    _log_changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def netns_path(self) -> str:
        """The instance's network namespace (the process's own)."""
        return f"/proc/{self.process.pid}/ns/net"

    @property
    def address(self) -> tuple[str, int]:
        """Where the build listens, as seen from inside its namespace."""
        return ("127.0.0.1", SMP_PORT)

    def socket_factory(self) -> Callable[[], socket.socket]:
        """Makes sockets that live in this instance's namespace (one per transport (re)open)."""
        return lambda: socket_in_namespace(self.netns_path)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Stop the build (SIGSTOP) for the block, so everything sent meanwhile is queued before it reads any.

        native_sim runs Zephyr on a simulated clock inside this one process, so from the moment it
        continues, what it does with a queue it finds is the same on every run, however loaded the
        machine. Returns only once every thread of it has stopped.
        """
        pid = self.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            # Reports the group stop (or an exit) without reaping: asyncio's child watcher reaps.
            stopped = os.waitid(os.P_PID, pid, os.WSTOPPED | os.WEXITED | os.WNOWAIT)
            if stopped is None or stopped.si_code != os.CLD_STOPPED:
                raise NativeSimError(f"{self.build.artifact.name} exited instead of stopping")
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    def count(self, text: str) -> int:
        """How many log lines so far contain `text`."""
        return sum(text in line for line in self.log_lines)

    async def wait_for_log(self, text: str, *, at_least: int = 1, timeout_s: float = 5.0) -> None:
        """Return once at least `at_least` log lines contain `text` (the log is read as it comes)."""
        async with asyncio.timeout(timeout_s):
            while self.count(text) < at_least:
                self._log_changed.clear()
                await self._log_changed.wait()

    async def _pump(self, ready: asyncio.Future[None]) -> None:
        assert self.process.stdout is not None
        while raw := await self.process.stdout.readline():
            line = _ANSI.sub("", raw.decode(errors="replace")).rstrip()
            self.log_lines.append(line)
            self._log_changed.set()
            if not ready.done() and READY_PATTERN.search(line):
                ready.set_result(None)
        if not ready.done():
            ready.set_exception(NativeSimError(f"{self.build.artifact.name} exited before it was ready"))


@contextlib.asynccontextmanager
async def native_sim_udp(artifact: str = UDP_BUILD) -> AsyncIterator[NativeSimUdp]:
    """Run the build `artifact` in a fresh network namespace until the block ends.

    The fixture is copied to a temporary directory and made executable there (the sdist's tar may
    drop the exec bit, and the build writes runtime files beside itself).
    """
    firmware = build(artifact)
    with tempfile.TemporaryDirectory(prefix="native-sim-") as workdir:
        exe = Path(workdir) / firmware.artifact.name
        shutil.copyfile(firmware.artifact, exe)
        exe.chmod(0o755)
        # unshare without --fork execs the shell, which execs the build: one pid, whose namespace
        # is the instance's. `-r` maps us to root in a user namespace when we are not root already.
        unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
        process = await asyncio.create_subprocess_exec(
            *unshare,
            "sh",
            "-c",
            'ip link set lo up && exec "$0"',
            str(exe),
            cwd=workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        instance = NativeSimUdp(firmware, process)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pump = asyncio.create_task(instance._pump(ready), name=f"native-sim-log-{process.pid}")
        try:
            try:
                await asyncio.wait_for(asyncio.shield(ready), START_TIMEOUT_S)
            except TimeoutError:
                raise NativeSimError(
                    f"{exe.name} was not ready within {START_TIMEOUT_S} s:\n" + "\n".join(instance.log_lines)
                ) from None
            yield instance
        finally:
            if process.returncode is None:
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5.0)
            except TimeoutError:
                process.kill()
                await process.wait()
            await pump
