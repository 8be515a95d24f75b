"""The shipped broker configuration (deploy/mosquitto/) on a real mosquitto with a throwaway PKI."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.deploy.pki import Identity, ThrowawayAuthority
from tests.harness.broker import MosquittoBroker

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_ACL = ROOT / "deploy/mosquitto/mcufleet.acl"


def with_operator(acl: str, name: str) -> str:
    """`acl` plus a block for operator `name`, copied from the `user operator` block as the docs say."""
    block = re.search(r"^user operator\n(?:topic .*\n?)+", acl, flags=re.MULTILINE)
    assert block is not None, "the shipped ACL has no `user operator` block"
    return (
        acl.rstrip("\n")
        + "\n\n"
        + block.group(0).replace("user operator", f"user {name}", 1).rstrip("\n")
        + "\n"
    )


def production_config(
    workdir: Path,
    port: int,
    authority: ThrowawayAuthority,
    broker_identity: Identity,
    acl: str,
    *,
    passwords: dict[str, str] | None = None,
) -> str:
    """deploy/mosquitto/mosquitto.conf (mosquitto-password.conf with `passwords`), test paths and port."""
    name = "mosquitto-password.conf" if passwords is not None else "mosquitto.conf"
    text = (ROOT / "deploy/mosquitto" / name).read_text()
    acl_file = workdir / "mcufleet.acl"
    acl_file.write_text(acl)
    replacements = {
        r"^listener 8883$": f"listener {port} 127.0.0.1",
        r"^cafile .*$": f"cafile {authority.ca_file}",
        r"^certfile .*$": f"certfile {broker_identity.cert_file}",
        r"^keyfile .*$": f"keyfile {broker_identity.key_file}",
        r"^acl_file .*$": f"acl_file {acl_file}",
        r"^persistence_location .*$": f"persistence_location {workdir}/data/",
    }
    if passwords is not None:
        password_file = workdir / "mcufleet.passwd"
        password_file.write_text("")
        for user, password in passwords.items():
            subprocess.run(["mosquitto_passwd", "-b", str(password_file), user, password], check=True)
        replacements[r"^password_file .*$"] = f"password_file {password_file}"
    for pattern, replacement in replacements.items():
        text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert count == 1, f"{pattern} not found once in mosquitto.conf"
    return text + ("user root\n" if os.geteuid() == 0 else "")


@contextlib.contextmanager
def secure_broker(
    directory: Path, *, operators: tuple[str, ...] = (), passwords: dict[str, str] | None = None
) -> Iterator[tuple[MosquittoBroker, ThrowawayAuthority]]:
    """The shipped conf and ACL (plus a block per extra operator name) on a free port, TLS only.

    With `passwords` (user -> password), the password-file variant instead of client certificates.
    """
    authority = ThrowawayAuthority(directory / "pki")
    workdir = directory / "broker"
    workdir.mkdir(parents=True)
    acl = SHIPPED_ACL.read_text()
    for name in operators:
        acl = with_operator(acl, name)
    probe = MosquittoBroker(workdir)
    broker_identity = authority.issue("broker", server=True)
    config = production_config(workdir, probe.port, authority, broker_identity, acl, passwords=passwords)
    broker = MosquittoBroker(workdir, port=probe.port, config=config)
    broker.start()
    try:
        yield broker, authority
    finally:
        broker.crash()
