"""The emulator's admin HTTP API under `/_emulator/`, for tests and demos in other processes.

    GET    /_emulator/health          {"ok": true}
    GET    /_emulator/faults          the fault knobs and the forced statuses still pending
    PUT    /_emulator/faults          change some knobs: {"latency_ms": 200, "error_rate": 0.1, ...}
    DELETE /_emulator/faults          back to a well-behaved server
    POST   /_emulator/faults/force    {"status": 503, "count": 3, "retry_after_s": 2}
    PUT    /_emulator/faults/devices/{serial}   {"kind": "status"|"garbage"|"truncated", "status": 500}
    DELETE /_emulator/faults/devices/{serial}   that device is answered normally again
    GET    /_emulator/counters        requests and statuses per endpoint
    DELETE /_emulator/counters        start counting from zero
    POST   /_emulator/activate        {"project_key", "version", "cohort", "percent", "software_type"}
    POST   /_emulator/deactivate      {"project_key", "version", "cohort", "software_type"}
    POST   /_emulator/assign          {"project_key", "device_serial", "cohort"}

Bodies are JSON; a malformed body or a call the model refuses answers 400 with an error body.
"""

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, TypeVar

import msgspec
from aiohttp import web

from simulator.cloud.counters import RequestCounters
from simulator.cloud.errors import ModelError
from simulator.cloud.faults import DeviceFault, FaultInjector, ForcedStatus
from simulator.cloud.model import DEFAULT_COHORT, DEFAULT_SOFTWARE_TYPE, CloudModel
from simulator.cloud.routes import json_error
from simulator.cloud.wire import JSON_ENCODER

ADMIN_PREFIX: Final = "/_emulator"
MAX_ADMIN_BODY_BYTES: Final = 64 * 1024

_Body = TypeVar("_Body")


class ActivateRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Body of `POST /_emulator/activate`."""

    project_key: str
    version: str
    cohort: str = DEFAULT_COHORT
    percent: int = 100
    software_type: str = DEFAULT_SOFTWARE_TYPE


class DeactivateRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Body of `POST /_emulator/deactivate`."""

    project_key: str
    version: str
    cohort: str = DEFAULT_COHORT
    software_type: str = DEFAULT_SOFTWARE_TYPE


class AssignRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Body of `POST /_emulator/assign`."""

    project_key: str
    device_serial: str
    cohort: str


class _BadBody(Exception):
    pass


@dataclass
class AdminRoutes:
    """The admin endpoints, bound to one emulator's model, faults and counters."""

    model: CloudModel
    faults: FaultInjector
    counters: RequestCounters

    def add_to(self, app: web.Application) -> None:
        """Register the admin routes (their names start with `admin`, which the counters use)."""
        router = app.router
        router.add_get(f"{ADMIN_PREFIX}/health", self.health, name="admin.health")
        router.add_get(f"{ADMIN_PREFIX}/faults", self.get_faults, name="admin.faults")
        router.add_put(f"{ADMIN_PREFIX}/faults", self.put_faults, name="admin.faults.put")
        router.add_delete(f"{ADMIN_PREFIX}/faults", self.reset_faults, name="admin.faults.delete")
        router.add_post(f"{ADMIN_PREFIX}/faults/force", self.force, name="admin.force")
        device_path = f"{ADMIN_PREFIX}/faults/devices/{{serial}}"
        router.add_put(device_path, self.fault_device, name="admin.faults.device")
        router.add_delete(device_path, self.clear_device, name="admin.faults.device.delete")
        router.add_get(f"{ADMIN_PREFIX}/counters", self.get_counters, name="admin.counters")
        router.add_delete(f"{ADMIN_PREFIX}/counters", self.reset_counters, name="admin.counters.delete")
        router.add_post(f"{ADMIN_PREFIX}/activate", self.activate, name="admin.activate")
        router.add_post(f"{ADMIN_PREFIX}/deactivate", self.deactivate, name="admin.deactivate")
        router.add_post(f"{ADMIN_PREFIX}/assign", self.assign, name="admin.assign")

    async def health(self, request: web.Request) -> web.Response:
        """Whether the emulator is up."""
        return _json({"ok": True})

    async def get_faults(self, request: web.Request) -> web.Response:
        """The current fault knobs."""
        return self._faults_reply()

    async def put_faults(self, request: web.Request) -> web.Response:
        """Change some fault knobs."""
        try:
            changes = await _body(request, dict[str, Any])
            self.faults.update(changes)
        except (_BadBody, ModelError) as error:
            return json_error(HTTPStatus.BAD_REQUEST, str(error))
        return self._faults_reply()

    async def reset_faults(self, request: web.Request) -> web.Response:
        """Back to a well-behaved server."""
        self.faults.reset()
        return self._faults_reply()

    async def force(self, request: web.Request) -> web.Response:
        """Answer the next requests with a forced status."""
        try:
            forced = await _body(request, ForcedStatus)
        except _BadBody as error:
            return json_error(HTTPStatus.BAD_REQUEST, str(error))
        self.faults.force(forced.status, forced.count, forced.retry_after_s)
        return self._faults_reply()

    async def fault_device(self, request: web.Request) -> web.Response:
        """Make the latest-release API misbehave for one device serial."""
        try:
            fault = await _body(request, DeviceFault)
        except _BadBody as error:
            return json_error(HTTPStatus.BAD_REQUEST, str(error))
        self.faults.fault_device(request.match_info["serial"], fault.kind, fault.status)
        return self._faults_reply()

    async def clear_device(self, request: web.Request) -> web.Response:
        """Answer one device normally again."""
        self.faults.clear_device(request.match_info["serial"])
        return self._faults_reply()

    async def get_counters(self, request: web.Request) -> web.Response:
        """Requests and statuses per endpoint."""
        return _json(self.counters.snapshot())

    async def reset_counters(self, request: web.Request) -> web.Response:
        """Start counting from zero."""
        self.counters.reset()
        return web.Response(status=HTTPStatus.NO_CONTENT)

    async def activate(self, request: web.Request) -> web.Response:
        """Activate a release in a cohort for a percentage of its devices."""
        try:
            body = await _body(request, ActivateRequest)
            self.model.activate(
                body.project_key, body.version, body.cohort, body.percent, software_type=body.software_type
            )
        except (_BadBody, ModelError) as error:
            return json_error(HTTPStatus.BAD_REQUEST, str(error))
        return web.Response(status=HTTPStatus.NO_CONTENT)

    async def deactivate(self, request: web.Request) -> web.Response:
        """Abort a release's activation in a cohort."""
        try:
            body = await _body(request, DeactivateRequest)
            self.model.deactivate(
                body.project_key, body.version, body.cohort, software_type=body.software_type
            )
        except (_BadBody, ModelError) as error:
            return json_error(HTTPStatus.BAD_REQUEST, str(error))
        return web.Response(status=HTTPStatus.NO_CONTENT)

    async def assign(self, request: web.Request) -> web.Response:
        """Put a device in a cohort."""
        try:
            body = await _body(request, AssignRequest)
            self.model.assign(body.project_key, body.device_serial, body.cohort)
        except (_BadBody, ModelError) as error:
            return json_error(HTTPStatus.BAD_REQUEST, str(error))
        return web.Response(status=HTTPStatus.NO_CONTENT)

    def _faults_reply(self) -> web.Response:
        return _json(
            {
                "settings": self.faults.settings,
                "forced_remaining": self.faults.forced_remaining,
                "devices": self.faults.device_faults,
            }
        )


async def _body(request: web.Request, kind: type[_Body]) -> _Body:
    raw = await request.read()
    try:
        return msgspec.json.decode(raw, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as error:
        raise _BadBody(f"bad request body: {error}") from None


def _json(data: object) -> web.Response:
    return web.Response(body=JSON_ENCODER.encode(data), content_type="application/json")
