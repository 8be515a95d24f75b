"""The QEMU harness itself: the manifest's command rewritten so flash is written once, never by a loader."""

from __future__ import annotations

from pathlib import Path

from tests.firmware.fixtures import build
from tests.firmware.qemu import loader_segments, qemu_argv

M0 = "zephyr_4.4.0_smp_server_0eae053d_qemu_cortex_m0_serial.merged.hex"
MPS2 = "zephyr_4.4.0_smp_server_0eae053d_mps2_an385_serial_recovery_buf1024.hex"


def test_the_command_loads_nothing_and_serves_its_sockets_to_the_harness(tmp_path: Path) -> None:
    """No `-device loader` (it would rewrite flash at every reset); UART, monitor, gdb on unix sockets."""
    argv = qemu_argv(build(MPS2), tmp_path)
    assert "-device" not in argv and not any(a.startswith("loader,") for a in argv)
    assert "none" not in argv and not any("<PORT>" in a for a in argv)
    assert f"socket,id=con,path={tmp_path / 'uart.sock'},server=on,wait=off" in argv
    assert argv[-1] == "-S" and f"unix:{tmp_path / 'gdb.sock'},server=on,wait=off" in argv
    assert "mps2-an385" in argv and "-serial" in argv


def test_the_segments_are_what_the_loaders_would_have_written() -> None:
    """The merged hex gives MCUboot and slot 0; a raw file lands at its `addr` (the mps2's RAM slot)."""
    m0 = loader_segments(build(M0))
    assert [hex(s.address) for s in m0] == ["0x0", "0x8000"]
    signed = build(M0).artifact.with_name(M0.replace(".merged.hex", ".signed.bin")).read_bytes()
    assert m0[1].data == signed
    mps2 = loader_segments(build(MPS2))
    assert mps2[-1].address == 0x20050000 and mps2[-1].data[:4] == bytes.fromhex("3db8f396")
