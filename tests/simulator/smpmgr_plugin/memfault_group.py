"""An smpmgr plugin for the Memfault MCUmgr group (128), used to drive the simulator with smpmgr.

smpmgr loads every `*_group.py` in a `--plugin-path=DIR` and mounts its `app`. The group is the
same two read commands the Memfault SDK defines: 0 = device info, 1 = project key. This file runs
inside smpmgr's own virtual environment (see the Makefile's `smpmgr` target), never in ours, which
is why mypy skips it.
"""

import asyncio
import sys
import types
from enum import IntEnum, unique
from typing import cast

import rich
import smp.error as smperr
import smp.message as smpmsg
import typer
from smpmgr.common import Options, connect_with_spinner, get_smpclient

# smpmgr executes plugins without registering them in sys.modules; pydantic resolves generic
# models through their module, so give this one an entry before the models are defined.
sys.modules.setdefault(__name__, types.ModuleType(__name__))

app = typer.Typer(name="memfault", help="Memfault MCUmgr group 128")


@unique
class MemfaultReturnCode(IntEnum):
    """The group's own return codes (memfault_mcumgr.h)."""

    OK = 0
    UNKNOWN = 1
    NO_PROJECT_KEY = 2


class MemfaultErrorV1(smperr.ErrorV1):
    """A v1 (plain `rc`) error from group 128."""

    _GROUP_ID = 128


class MemfaultErrorV2(smperr.ErrorV2[MemfaultReturnCode]):
    """A v2 (`err` map) error from group 128."""

    _GROUP_ID = 128


class DeviceInfoReadRequest(smpmsg.ReadRequest):
    """Command 0, read."""

    _GROUP_ID = 128
    _COMMAND_ID = 0


class DeviceInfoReadResponse(smpmsg.ReadResponse):
    """The four device-info strings."""

    _GROUP_ID = 128
    _COMMAND_ID = 0

    device_serial: str
    hardware_version: str
    software_type: str
    current_version: str


class DeviceInfoRead(DeviceInfoReadRequest):
    """Device info with its response and error types."""

    _Response = DeviceInfoReadResponse
    _ErrorV1 = MemfaultErrorV1
    _ErrorV2 = MemfaultErrorV2


class ProjectKeyReadRequest(smpmsg.ReadRequest):
    """Command 1, read."""

    _GROUP_ID = 128
    _COMMAND_ID = 1


class ProjectKeyReadResponse(smpmsg.ReadResponse):
    """The project key."""

    _GROUP_ID = 128
    _COMMAND_ID = 1

    project_key: str


class ProjectKeyRead(ProjectKeyReadRequest):
    """Project key with its response and error types."""

    _Response = ProjectKeyReadResponse
    _ErrorV1 = MemfaultErrorV1
    _ErrorV2 = MemfaultErrorV2


def _request(options: Options, request: smpmsg.ReadRequest) -> None:
    client = get_smpclient(options)

    async def exchange() -> None:
        await connect_with_spinner(client)
        rich.print(await client.request(request))  # type: ignore[call-overload]

    asyncio.run(exchange())


@app.command()
def device_info(ctx: typer.Context) -> None:
    """Read the device info (serial, hardware version, software type, current version)."""
    _request(cast("Options", ctx.obj), DeviceInfoRead())


@app.command()
def project_key(ctx: typer.Context) -> None:
    """Read the Memfault project key."""
    _request(cast("Options", ctx.obj), ProjectKeyRead())
