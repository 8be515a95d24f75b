"""A real Zephyr + MCUboot build running in qemu-system-arm, its UART served as `socket://` to the agent.

How it differs from the manifest's `qemu_cmd`, and why:

- Flash is written once, through QEMU's gdb stub, before the CPU starts. `-device loader` copies the
  image into flash again on every reset, which would undo MCUboot's swap; written through the stub,
  flash (and the mps2's RAM-backed slots) keeps whatever the device wrote across resets.
- The UART is a unix-socket chardev that this harness keeps connected for the machine's whole life
  (QEMU drops output while no client is connected), and a TCP console relay in front of it is what
  the agent connects to. The relay reads the console text (boot banners), can drop the agent's
  connection (a link drop), and records the upload offsets the agent sends.
- Bytes that arrive while MCUboot prints its banner can wedge the emulated UART for good, so the relay
  drops what the agent sends from the moment a reset starts until the app is up again, as a real UART
  loses what is sent to a board that is still booting.
- The QEMU monitor (on a unix socket) forces resets, as a watchdog would.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import cbor2
from intelhex import IntelHex

from agent.link.transport.serial import ConsoleFrameDecoder
from agent.smp.frame import HEADER_SIZE, decode_header
from tests.firmware.fixtures import FirmwareBuild, FirmwareMissing, fixture

START_TIMEOUT_S: Final = 20.0
GDB_CHUNK_BYTES: Final = 1024
"""QEMU's gdb stub takes packets of at most 4096 characters (a memory write is hex: 2 per byte)."""
RESET_BANNER: Final = "*** Booting MCUboot"
_ANSI: Final = re.compile(r"\x1b\[[0-9;]*m")
_SMP_LINE: Final = re.compile(rb"\x06\x09|\x04\x14")
IMAGE_GROUP: Final = 1
IMAGE_UPLOAD_COMMAND: Final = 1
WRITE_OP: Final = 2


@dataclass(frozen=True, slots=True)
class Segment:
    """Bytes to place at an address before the CPU starts."""

    address: int
    data: bytes


@dataclass(frozen=True, slots=True)
class UploadRequest:
    """One image-upload request the agent sent to the device (seen by the relay)."""

    offset: int
    data_bytes: int
    connection: int
    """Which agent connection carried it (0 for the first; it grows with every link drop)."""


@dataclass
class ConsoleRelay:
    """What passed between the agent and the device."""

    lines: list[str] = field(default_factory=list)
    uploads: list[UploadRequest] = field(default_factory=list)
    bytes_to_device: int = 0
    bytes_dropped_while_booting: int = 0
    connections: int = 0
    device_gone: bool = False
    """QEMU closed the UART (it exited): nothing more will come."""
    upload_replies: int = 0
    max_uploads_in_flight: int = 0
    """The most upload requests the device had received and not yet answered (the window used)."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def note(self) -> None:
        """Wake whoever waits for a line or an upload."""
        self.changed.set()


def loader_segments(build: FirmwareBuild) -> list[Segment]:
    """What the manifest's `-device loader` options would load, read from the fixtures."""
    assert build.qemu_cmd is not None, f"{build.artifact} has no qemu_cmd"
    segments: list[Segment] = []
    for argument in shlex.split(build.qemu_cmd):
        if not argument.startswith("loader,"):
            continue
        options = dict(option.split("=", 1) for option in argument.split(",")[1:])
        path = fixture(options["file"])
        if "addr" in options:
            segments.append(Segment(int(options["addr"], 0), path.read_bytes()))
            continue
        hex_file = IntelHex(str(path))
        for start, end in hex_file.segments():
            segments.append(Segment(start, hex_file.tobinstr(start, end - 1)))
    return segments


def qemu_argv(build: FirmwareBuild, workdir: Path) -> list[str]:
    """The manifest's command with the UART, monitor and gdb stub on unix sockets and no loader."""
    assert build.qemu_cmd is not None
    emulator = shutil.which("qemu-system-arm")
    if emulator is None:
        raise FirmwareMissing("qemu-system-arm is not installed: run `make firmware-deps`")
    argv: list[str] = [emulator]
    words = shlex.split(build.qemu_cmd)[1:]
    skip = False
    for index, word in enumerate(words):
        if skip:
            skip = False
            continue
        following = words[index + 1] if index + 1 < len(words) else ""
        if word == "-device" and following.startswith("loader,"):
            skip = True
            continue
        if word == "-monitor":
            skip = True
            continue
        if word == "-chardev" and following.startswith("socket,id=con,"):
            argv += ["-chardev", f"socket,id=con,path={workdir / 'uart.sock'},server=on,wait=off"]
            skip = True
            continue
        argv.append(word)
    argv += [
        "-monitor",
        f"unix:{workdir / 'monitor.sock'},server=on,wait=off",
        "-gdb",
        f"unix:{workdir / 'gdb.sock'},server=on,wait=off",
        "-S",
    ]
    return argv


async def _open_unix(path: Path, timeout_s: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect once QEMU has created the socket (it gives no other sign that it is listening)."""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                return await asyncio.open_unix_connection(str(path))
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(0.02)


class GdbStub:
    """Just enough of the gdb remote protocol to write memory and let the machine run."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def command(self, body: bytes) -> bytes:
        """Send one packet and return the stub's reply packet."""
        checksum = sum(body) % 256
        self._writer.write(b"$" + body + b"#%02x" % checksum)
        await self._writer.drain()
        buffer = b""
        while True:
            chunk = await self._reader.read(4096)
            if not chunk:
                raise ConnectionError("the gdb stub closed the connection")
            buffer += chunk
            start = buffer.find(b"$")
            end = buffer.find(b"#", start + 1) if start >= 0 else -1
            if start >= 0 and end >= 0 and len(buffer) >= end + 3:
                self._writer.write(b"+")
                await self._writer.drain()
                return buffer[start + 1 : end]

    async def write(self, segment: Segment) -> None:
        """Write a segment to guest memory (flash included) in packets the stub accepts."""
        for offset in range(0, len(segment.data), GDB_CHUNK_BYTES):
            chunk = segment.data[offset : offset + GDB_CHUNK_BYTES]
            reply = await self.command(
                b"M%x,%x:" % (segment.address + offset, len(chunk)) + chunk.hex().encode()
            )
            if reply != b"OK":
                raise RuntimeError(f"gdb stub refused a write at {segment.address + offset:#x}: {reply!r}")

    async def detach(self) -> None:
        """Detach (the machine keeps running)."""
        await self.command(b"D")
        self._writer.close()


class QemuDevice:
    """One emulated board with the build's flash written once; `url` is what the agent opens."""

    def __init__(self, build: FirmwareBuild, *, ready_marker: str | None) -> None:
        """`ready_marker` is the console text that says the app is up (None: the build prints nothing)."""
        self.build = build
        self.ready_marker = ready_marker
        self.relay = ConsoleRelay()
        self.url = ""
        self._workdir = Path(tempfile.mkdtemp(prefix="mcufleet-qemu-"))
        self._process: asyncio.subprocess.Process | None = None
        self._uart: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._monitor: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._server: asyncio.Server | None = None
        self._client: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._booting = ready_marker is not None
        self._line = bytearray()
        self._decoder = ConsoleFrameDecoder()
        self._reply_decoder = ConsoleFrameDecoder()

    async def start(self, segments: list[Segment]) -> None:
        """Start QEMU halted, write `segments` through the gdb stub, reset and run."""
        with (self._workdir / "qemu.log").open("wb") as log:
            self._process = await asyncio.create_subprocess_exec(
                *qemu_argv(self.build, self._workdir),
                cwd=self._workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
            )
        self._uart = await _open_unix(self._workdir / "uart.sock", START_TIMEOUT_S)
        self._monitor = await _open_unix(self._workdir / "monitor.sock", START_TIMEOUT_S)
        await self._read_prompt()
        gdb = GdbStub(*await _open_unix(self._workdir / "gdb.sock", START_TIMEOUT_S))
        for segment in segments:
            await gdb.write(segment)
        # The reset loads the stack pointer and reset vector from the flash just written.
        await self.monitor("system_reset")
        await gdb.detach()
        await self.monitor("cont")
        self._tasks.append(asyncio.create_task(self._from_device(), name="qemu-uart"))
        self._server = await asyncio.start_server(self._from_agent, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"socket://127.0.0.1:{port}"

    async def _read_prompt(self) -> str:
        assert self._monitor is not None
        reader = self._monitor[0]
        async with asyncio.timeout(START_TIMEOUT_S):
            text = await reader.readuntil(b"(qemu) ")
        return text.decode(errors="replace")

    async def monitor(self, command: str) -> str:
        """Run a QEMU monitor (HMP) command and return what it printed."""
        assert self._monitor is not None
        self._monitor[1].write(command.encode() + b"\n")
        await self._monitor[1].drain()
        return await self._read_prompt()

    async def watchdog_reset(self) -> None:
        """Reset the board the way a watchdog does: at once, whatever the app is doing."""
        self._booting = self.ready_marker is not None
        await self.monitor("system_reset")

    def drop_link(self) -> None:
        """Cut the agent's connection (a pulled cable, a serial server restart)."""
        if self._client is not None:
            self._client.transport.abort()
            self._client = None

    # --- waiting on the console ----------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[ConsoleRelay], bool], timeout_s: float = 60.0) -> None:
        """Wait until `predicate(relay)` holds (console lines, uploads seen)."""
        async with asyncio.timeout(timeout_s):
            while not predicate(self.relay):
                if self.relay.device_gone:
                    log = (self._workdir / "qemu.log").read_text(errors="replace")
                    raise RuntimeError(f"QEMU exited: {log[-2000:]}")
                self.relay.changed.clear()
                await self.relay.changed.wait()

    def last_boot(self) -> list[str]:
        """The console lines since the last MCUboot banner (the current boot)."""
        lines = self.relay.lines
        starts = [i for i, line in enumerate(lines) if RESET_BANNER in line]
        return lines[starts[-1] :] if starts else list(lines)

    def count_lines(self, text: str) -> int:
        """How many console lines so far contain `text`."""
        return sum(text in line for line in self.relay.lines)

    # --- the relay ------------------------------------------------------------------------------

    async def _from_device(self) -> None:
        assert self._uart is not None
        reader = self._uart[0]
        while chunk := await reader.read(4096):
            if self._client is not None and not self._client.is_closing():
                self._client.write(chunk)
            self._console(chunk)
            for frame in self._reply_decoder.feed(chunk):
                if _is_upload(frame):
                    self.relay.upload_replies += 1
        self.relay.device_gone = True
        self.relay.note()

    def _console(self, chunk: bytes) -> None:
        self._line.extend(chunk)
        while (end := self._line.find(b"\n")) >= 0:
            raw = bytes(self._line[:end])
            del self._line[: end + 1]
            if _SMP_LINE.search(raw):
                continue
            text = _ANSI.sub("", raw.decode(errors="replace")).strip()
            if not text:
                continue
            self.relay.lines.append(text)
            if RESET_BANNER in text and self.ready_marker is not None:
                self._booting = True
            elif self.ready_marker is not None and self.ready_marker in text:
                self._booting = False
            self.relay.note()

    async def _from_agent(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A serial line has one peer: a new connection replaces the old one.
        self.drop_link()
        self._client = writer
        connection = self.relay.connections
        self.relay.connections += 1
        self._decoder.reset()
        assert self._uart is not None
        uart = self._uart[1]
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(4096):
                if self._client is not writer:
                    break
                if self._booting:
                    self.relay.bytes_dropped_while_booting += len(chunk)
                    continue
                self.relay.bytes_to_device += len(chunk)
                uart.write(chunk)
                self._record_uploads(chunk, connection)
        if self._client is writer:
            self._client = None
        writer.close()

    def _record_uploads(self, chunk: bytes, connection: int) -> None:
        for frame in self._decoder.feed(chunk):
            if not _is_upload(frame) or decode_header(frame).op != WRITE_OP:
                continue
            body = cbor2.loads(frame[HEADER_SIZE:])
            self.relay.uploads.append(UploadRequest(int(body["off"]), len(body["data"]), connection))
            in_flight = len(self.relay.uploads) - self.relay.upload_replies
            self.relay.max_uploads_in_flight = max(self.relay.max_uploads_in_flight, in_flight)
            self.relay.note()

    def summary(self) -> str:
        """What passed on the line, for a failing test's captured output."""
        relay = self.relay
        tail = "\n  ".join(relay.lines[-25:])
        return (
            f"relay: connections={relay.connections} to_device={relay.bytes_to_device}B "
            f"dropped_while_booting={relay.bytes_dropped_while_booting}B booting={self._booting} "
            f"uploads={len(relay.uploads)} upload_replies={relay.upload_replies} "
            f"last_offsets={[u.offset for u in relay.uploads[-5:]]} device_gone={relay.device_gone}\n"
            f"console tail:\n  {tail}"
        )

    async def stop(self) -> None:
        """Stop QEMU and the relay."""
        print(self.summary())
        self.drop_link()
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        for pair in (self._uart, self._monitor):
            if pair is not None:
                pair[1].close()
        shutil.rmtree(self._workdir, ignore_errors=True)


def _is_upload(frame: bytes) -> bool:
    header = decode_header(frame)
    return (header.group, header.command) == (IMAGE_GROUP, IMAGE_UPLOAD_COMMAND)


@contextlib.asynccontextmanager
async def running_board(
    build: FirmwareBuild, segments: list[Segment] | None = None, *, ready_marker: str | None
) -> AsyncIterator[QemuDevice]:
    """A QemuDevice for the block; waits for the app's ready marker when the build prints one."""
    device = QemuDevice(build, ready_marker=ready_marker)
    try:
        await device.start(segments if segments is not None else loader_segments(build))
        if ready_marker is not None:
            await device.wait_for(lambda relay: any(ready_marker in line for line in relay.lines))
        yield device
    finally:
        await device.stop()
