"""The emulated Memfault HTTP endpoints in aiohttp: latest release, its URL, and artifact downloads.

Rules of this file: handlers only translate between HTTP and the pure parts (`wire`, `decision`,
`ranges`, `signing`, `faults`); every bad input becomes a 4xx with a JSON error body; a 500 is a bug.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final, assert_never

from aiohttp import web

from simulator.cloud.counters import Endpoint, RequestCounters
from simulator.cloud.decision import DeviceQuery, NoUpdate, Offer, Refusal, decide
from simulator.cloud.faults import DeviceFault, DeviceFaultKind, FaultInjector, InjectedFailure
from simulator.cloud.model import CloudModel
from simulator.cloud.ranges import ByteSpan, Unsatisfiable, WholeBody, resolve_range
from simulator.cloud.signing import SignatureCheck, UrlSigner
from simulator.cloud.wire import (
    JSON_ENCODER,
    OPTIONAL_PARAMETERS,
    REQUIRED_PARAMETERS,
    error_body,
    parse_device_query,
    release_reply,
)

PROJECT_KEY_HEADER: Final = "Memfault-Project-Key"
REASON_HEADER: Final = "memfault-reason"
LATEST_PATH: Final = "/api/v0/releases/latest"
LATEST_URL_PATH: Final = "/api/v0/releases/latest/url"
ARTIFACT_PATH_PREFIX: Final = "/artifacts/"
ADMIN_ROUTE_PREFIX: Final = "admin"
_KEPT_ERROR_HEADERS: Final = ("Allow", "Retry-After")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, message: str, *, retry_after_s: int | None = None) -> web.Response:
    """An error answer with a `{"error": {"message": ...}}` body."""
    headers = {} if retry_after_s is None else {"Retry-After": str(retry_after_s)}
    return web.Response(
        status=status, body=error_body(message), content_type="application/json", headers=headers
    )


@dataclass
class CloudRoutes:
    """The public endpoints, bound to one emulator's model, signer, faults, counters and clock."""

    model: CloudModel
    signer: UrlSigner
    faults: FaultInjector
    counters: RequestCounters
    clock: Callable[[], float]
    artifact_base_url: Callable[[], str]
    """The scheme, host and port that download URLs point at (known once the server listens)."""

    def add_to(self, app: web.Application) -> None:
        """Register the routes and the counting/fault middleware on an application."""
        app.middlewares.append(self._middleware)
        app.router.add_get(LATEST_PATH, self.latest, name=Endpoint.LATEST.value)
        app.router.add_get(LATEST_URL_PATH, self.latest_url, name=Endpoint.LATEST_URL.value)
        app.router.add_get(
            ARTIFACT_PATH_PREFIX + "{artifact_id:[0-9]{1,18}}", self.artifact, name=Endpoint.ARTIFACT.value
        )

    def artifact_url(self, artifact_id: int) -> str:
        """A signed download URL for the artifact, valid for the signer's TTL from now."""
        query = self.signer.query(artifact_id, self.clock())
        return f"{self.artifact_base_url()}{ARTIFACT_PATH_PREFIX}{artifact_id}?{query}"

    async def latest(self, request: web.Request) -> web.Response:
        """`GET /api/v0/releases/latest`: the release JSON, 204 with a reason, or an error."""
        return self._release_answer(request, url_only=False)

    async def latest_url(self, request: web.Request) -> web.Response:
        """`GET /api/v0/releases/latest/url`: the artifact URL as text, 204 with a reason, or an error."""
        return self._release_answer(request, url_only=True)

    async def artifact(self, request: web.Request) -> web.Response:
        """`GET /artifacts/{id}?expires=..&signature=..`: the payload, whole or one byte range."""
        artifact_id = int(request.match_info["artifact_id"])
        check = self.signer.check(
            artifact_id, _single(request, "expires"), _single(request, "signature"), self.clock()
        )
        if check is SignatureCheck.EXPIRED:
            return json_error(HTTPStatus.FORBIDDEN, "Request has expired")
        if check is not SignatureCheck.VALID:
            return json_error(HTTPStatus.FORBIDDEN, "Invalid signature")
        artifact = self.model.artifacts_by_id.get(artifact_id)
        if artifact is None:
            return json_error(HTTPStatus.NOT_FOUND, "No such artifact")
        etag = f'"{artifact.sha256}"'
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Content-Disposition": f'attachment; filename="{artifact.filename}"',
        }
        range_header = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if if_range is not None and if_range != etag:
            range_header = None
        size_bytes = artifact.size_bytes
        match resolve_range(range_header, size_bytes):
            case WholeBody():
                status, body = HTTPStatus.OK, artifact.content
            case ByteSpan() as span:
                status, body = HTTPStatus.PARTIAL_CONTENT, artifact.content[span.first : span.last + 1]
                headers["Content-Range"] = span.content_range(size_bytes)
            case Unsatisfiable() as unsatisfiable:
                status, body = HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, b""
                headers["Content-Range"] = unsatisfiable.content_range(size_bytes)
            case unreachable:
                assert_never(unreachable)
        return web.Response(
            status=status, body=body, content_type="application/octet-stream", headers=headers
        )

    def _release_answer(self, request: web.Request, *, url_only: bool) -> web.Response:
        checked = self._checked_query(request)
        if isinstance(checked, web.Response):
            return checked
        project_key, query = checked
        device_fault = self.faults.device_faults.get(query.device_serial)
        if (injected := _device_fault_answer(device_fault)) is not None:
            return injected
        match decide(self.model, project_key, query):
            case Refusal(status=status, message=message):
                return json_error(status, message)
            case NoUpdate(reason=reason):
                return web.Response(status=HTTPStatus.NO_CONTENT, headers={REASON_HEADER: reason.value})
            case Offer() as offer:
                url = self.artifact_url(offer.artifact.id)
                if url_only:
                    return web.Response(text=url, content_type="text/plain")
                full = offer.release.full_artifact(offer.artifact.hardware_version)
                full_image = (full, self.artifact_url(full.id)) if full is not None else None
                body = JSON_ENCODER.encode(release_reply(offer, url, full_image))
                if device_fault is not None and device_fault.kind is DeviceFaultKind.TRUNCATED:
                    body = body[: len(body) // 2]
                return web.Response(body=body, content_type="application/json")
            case unreachable:
                assert_never(unreachable)

    def _checked_query(self, request: web.Request) -> tuple[str, DeviceQuery] | web.Response:
        """The project key and device query, or the 403, 400 or 429 that the request earns."""
        project_key = request.headers.get(PROJECT_KEY_HEADER, "")
        if project_key not in self.model.projects:
            message = "Invalid project key" if project_key else "Missing project key"
            return json_error(HTTPStatus.FORBIDDEN, message)
        parameters = {
            name: request.query.getall(name, []) for name in (*REQUIRED_PARAMETERS, *OPTIONAL_PARAMETERS)
        }
        query = parse_device_query(parameters)
        if isinstance(query, Refusal):
            return json_error(query.status, query.message)
        retry_after_s = self.faults.admit(query.device_serial, self.clock())
        if retry_after_s is not None:
            return json_error(HTTPStatus.TOO_MANY_REQUESTS, "Too many requests", retry_after_s=retry_after_s)
        return project_key, query

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count every request and its status, inject faults, and turn aiohttp's errors into JSON."""
        endpoint = _endpoint_of(request)
        self.counters.received(endpoint)
        try:
            response = await self._faulty(endpoint, request, handler)
        except web.HTTPException as error:
            response = json_error(error.status, error.reason)
            response.headers.update(
                {name: error.headers[name] for name in _KEPT_ERROR_HEADERS if name in error.headers}
            )
        except Exception:
            self.counters.answered(endpoint, HTTPStatus.INTERNAL_SERVER_ERROR)
            raise
        self.counters.answered(endpoint, response.status)
        return response

    async def _faulty(self, endpoint: Endpoint, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self.faults.affects(endpoint):
            return await handler(request)
        if self.faults.settings.latency_ms:
            await asyncio.sleep(self.faults.settings.latency_ms / 1000)
        failure: InjectedFailure | None = self.faults.failure_for(endpoint)
        if failure is not None:
            return json_error(failure.status, failure.message, retry_after_s=failure.retry_after_s)
        return await handler(request)


def _device_fault_answer(fault: DeviceFault | None) -> web.Response | None:
    """The answer a device fault imposes before any decision (None: decide, maybe truncate later)."""
    if fault is None or fault.kind is DeviceFaultKind.TRUNCATED:
        return None
    if fault.kind is DeviceFaultKind.STATUS:
        return json_error(fault.status, "injected for this device")
    return web.Response(body=b"<html>not a release", content_type="application/json")


def _endpoint_of(request: web.Request) -> Endpoint:
    name = getattr(request.match_info.route, "name", None) or ""
    if name.startswith(ADMIN_ROUTE_PREFIX):
        return Endpoint.ADMIN
    try:
        return Endpoint(name)
    except ValueError:
        return Endpoint.OTHER


def _single(request: web.Request, name: str) -> str | None:
    """The value of a query parameter given exactly once (None when absent or repeated)."""
    values = request.query.getall(name, [])
    return values[0] if len(values) == 1 else None
