"""smpclient 7.3.0's own UDP integration tests pass against the real native_sim_udp build and the simulator.

The tests are smpclient's (`tests/integration` of its sdist, run unchanged); the thin plugin
tests/firmware/smpclient_udp_plugin.py points them at each target. Each run has its own network
namespace, since smpclient can only reach port 1337 on 127.0.0.1. The file-system group's tests
are excepted (the simulator has no fs group), and the serial, raw-serial, fragmentation and image
tests apply to no UDP build (they have no `native_sim.udp` parameter or skip it by their own
rule), so they are not collected: nothing is skipped, and the run fails if anything is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Final
from xml.etree import ElementTree

import pytest

from tests.firmware.fixtures import sdist_dir

SMPCLIENT_TESTS: Final = (
    "tests/integration/test_udp.py",
    "tests/integration/test_os_management.py",
    "tests/integration/test_enumeration.py",
)
EXPECTED: Final = {
    "test_udp_ip_family[native_sim.udp]",
    "test_echo_roundtrip[native_sim.udp-]",
    "test_echo_roundtrip[native_sim.udp-a]",
    "test_echo_roundtrip[native_sim.udp-Hello, SMP server!]",
    "test_mcumgr_parameters[native_sim.udp]",
    "test_count_supported_groups[native_sim.udp]",
    "test_os_group_is_supported[native_sim.udp]",
}
RUN_TIMEOUT_S: Final = 120.0


@pytest.mark.parametrize("target", ["firmware", "simulator"])
def test_smpclient_udp_integration_tests_pass(target: str, tmp_path: Path) -> None:
    """Every smpclient UDP integration test for `native_sim.udp` passes against `target`, none skipped."""
    report = tmp_path / "junit.xml"
    served_log = tmp_path / "served.log"
    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    pytest_argv = [
        sys.executable,
        "-m",
        "pytest",
        *SMPCLIENT_TESTS,
        "-p",
        "smpclient_udp_plugin",
        "-p",
        "no:cacheprovider",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        f"--junitxml={report}",
        "-q",
    ]
    environment = {
        **os.environ,
        "MCUFLEET_SMP_TARGET": target,
        "MCUFLEET_SMP_SERVED_LOG": str(served_log),
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [*unshare, "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *pytest_argv],
        cwd=sdist_dir(),
        env=environment,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    cases = ElementTree.parse(report).getroot().iter("testcase")  # noqa: S314 - our own run's report
    outcomes = {case.get("name"): {child.tag for child in case} for case in cases}
    assert set(outcomes) == EXPECTED, run.stdout
    verdicts = {name: tags - {"system-out", "system-err"} for name, tags in outcomes.items()}
    assert all(not tags for tags in verdicts.values()), verdicts  # no failure, error or skipped
    served = served_log.read_text().splitlines()
    assert len(served) == len(EXPECTED)  # one server per test, each the target asked for
    assert {line.split()[0] for line in served} == {target}
    if target == "simulator":
        assert all(int(line.split()[1]) > 0 for line in served)
