"""The Memfault cloud emulator as a running aiohttp server: the composition of model, routes and knobs."""

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from aiohttp import web

from simulator.cloud.admin import MAX_ADMIN_BODY_BYTES, AdminRoutes
from simulator.cloud.counters import RequestCounters
from simulator.cloud.errors import LifecycleError
from simulator.cloud.faults import FaultInjector
from simulator.cloud.loader import load_directory
from simulator.cloud.model import DEFAULT_COHORT, DEFAULT_SOFTWARE_TYPE, CloudModel, Project
from simulator.cloud.releases import ArtifactSource, Release
from simulator.cloud.routes import CloudRoutes
from simulator.cloud.signing import DEFAULT_URL_TTL_S, UrlSigner

LOOPBACK: Final = "127.0.0.1"
SHUTDOWN_TIMEOUT_S: Final = 5.0


class CloudEmulator:
    """An emulated Memfault cloud on loopback: the releases API, signed downloads and an admin API.

    Use it as an async context manager (or call `start` and `stop`)::

        async with CloudEmulator() as cloud:
            cloud.add_release("project-key", "1.1.0", {"nrf54l15dk": image_bytes})
            cloud.activate("project-key", "1.1.0")
            ...  # query cloud.base_url + "/api/v0/releases/latest"

    Attributes:
        model: the projects, releases, cohorts and activations (change it at any time).
        faults: the fault knobs (`configure`, `force`, `reset`).
        counters: requests and statuses per endpoint.
    """

    def __init__(
        self,
        model: CloudModel | None = None,
        *,
        clock: Callable[[], float] = time.time,
        url_ttl_s: float = DEFAULT_URL_TTL_S,
        secret: bytes | None = None,
        fault_seed: int = 0,
        public_base_url: str | None = None,
        host: str = LOOPBACK,
        port: int = 0,
    ) -> None:
        """Build a stopped emulator.

        Args:
            model: the data to serve (default: empty).
            clock: seconds since the epoch; drives URL expiry, rate limits and creation dates.
            url_ttl_s: how long download URLs stay valid.
            secret: the URL-signing key (default: random per emulator).
            fault_seed: seed of the random 503s.
            public_base_url: the scheme, host and port download URLs name (default: `base_url`).
            host: where the context manager listens.
            port: the port the context manager listens on (0: any free port).
        """
        self.model = model if model is not None else CloudModel()
        self.faults = FaultInjector(fault_seed)
        self.counters = RequestCounters()
        self._clock = clock
        self._public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self._listen = (host, port)
        self._base_url: str | None = None
        self._runner: web.AppRunner | None = None
        signer = UrlSigner(url_ttl_s=url_ttl_s) if secret is None else UrlSigner(secret, url_ttl_s)
        self._routes = CloudRoutes(
            self.model, signer, self.faults, self.counters, clock, artifact_base_url=self._artifact_base_url
        )

    @classmethod
    def from_directory(
        cls, directory: Path, *, clock: Callable[[], float] = time.time, **options: Any
    ) -> Self:
        """An emulator serving `directory/cloud.toml` (other options as for the constructor).

        Raises:
            CloudConfigError: the directory cannot be loaded.
        """
        return cls(load_directory(directory, now_s=clock()), clock=clock, **options)

    def build_app(self) -> web.Application:
        """The aiohttp application (for aiohttp's test client; `start` builds its own)."""
        app = web.Application(client_max_size=MAX_ADMIN_BODY_BYTES)
        self._routes.add_to(app)
        AdminRoutes(self.model, self.faults, self.counters).add_to(app)
        return app

    async def start(self, host: str = LOOPBACK, port: int = 0) -> str:
        """Listen on `host:port` (0: a free port) and return the base URL.

        Raises:
            LifecycleError: already started.
        """
        if self._runner is not None:
            raise LifecycleError("the cloud emulator is already running")
        runner = web.AppRunner(
            self.build_app(), handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        bound_port = runner.addresses[0][1]
        shown_host = f"[{host}]" if ":" in host else host
        self._runner = runner
        self._base_url = f"http://{shown_host}:{bound_port}"
        return self._base_url

    async def stop(self) -> None:
        """Stop listening (a no-op when stopped)."""
        runner, self._runner, self._base_url = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start(*self._listen)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """`http://host:port` of the running server.

        Raises:
            LifecycleError: the emulator is not running.
        """
        if self._base_url is None:
            raise LifecycleError("the cloud emulator is not running")
        return self._base_url

    def artifact_url(self, artifact_id: int) -> str:
        """A signed download URL for an artifact, valid for `url_ttl_s` from now."""
        return self._routes.artifact_url(artifact_id)

    def add_project(
        self,
        project_key: str,
        *,
        auto_register: bool = True,
        hardware_versions: tuple[str, ...] = (),
        software_types: tuple[str, ...] = (),
    ) -> Project:
        """Create or update a project (see `CloudModel.add_project`)."""
        return self.model.add_project(
            project_key,
            auto_register=auto_register,
            hardware_versions=hardware_versions,
            software_types=software_types,
        )

    def add_release(
        self,
        project_key: str,
        version: str,
        artifact_bytes_by_hardware: Mapping[str, bytes],
        *,
        must_pass_through: bool = False,
        software_type: str = DEFAULT_SOFTWARE_TYPE,
        delta_bytes_by_hardware_and_base: Mapping[tuple[str, str], bytes] | None = None,
        notes: str = "",
        revision: str = "",
        filename_by_hardware: Mapping[str, str] | None = None,
        without_sha256: bool = False,
    ) -> Release:
        """Add a release, created now, with full images per hardware version and optional deltas.

        Args:
            project_key: the project (created when new).
            version: the release version; unique per project and software type.
            artifact_bytes_by_hardware: full images (opaque bytes), keyed by hardware version.
            must_pass_through: devices may not skip this release on the way to a newer one.
            software_type: the software component the release updates.
            delta_bytes_by_hardware_and_base: patches keyed by (hardware version, base version).
            notes: release notes.
            revision: the source revision.
            filename_by_hardware: download file names of the full images.
            without_sha256: replies give md5 and sha1 only (the sha256 is empty).

        Raises:
            ModelError: a bad version or file name, a duplicate release, or no artifact.
        """
        names = filename_by_hardware or {}
        sources = [
            ArtifactSource(hardware, content, filename=names.get(hardware))
            for hardware, content in artifact_bytes_by_hardware.items()
        ]
        sources += [
            ArtifactSource(hardware, content, base_version=base)
            for (hardware, base), content in (delta_bytes_by_hardware_and_base or {}).items()
        ]
        return self.model.add_release(
            project_key,
            version,
            sources,
            created_s=self._clock(),
            software_type=software_type,
            must_pass_through=must_pass_through,
            notes=notes,
            revision=revision,
            without_sha256=without_sha256,
        )

    def activate(
        self,
        project_key: str,
        version: str,
        cohort: str = DEFAULT_COHORT,
        percent: int = 100,
        *,
        software_type: str = DEFAULT_SOFTWARE_TYPE,
    ) -> None:
        """Activate a release in a cohort for `percent` of its devices (see `CloudModel.activate`)."""
        self.model.activate(project_key, version, cohort, percent, software_type=software_type)

    def deactivate(
        self,
        project_key: str,
        version: str,
        cohort: str = DEFAULT_COHORT,
        *,
        software_type: str = DEFAULT_SOFTWARE_TYPE,
    ) -> None:
        """Abort a release's activation in a cohort."""
        self.model.deactivate(project_key, version, cohort, software_type=software_type)

    def assign(self, project_key: str, device_serial: str, cohort: str) -> None:
        """Put a device in a cohort."""
        self.model.assign(project_key, device_serial, cohort)

    def configure_cohort(self, project_key: str, cohort: str, *, allow_downgrade: bool) -> None:
        """Set a cohort's "Disable Version Checking"."""
        self.model.configure_cohort(project_key, cohort, allow_downgrade=allow_downgrade)

    def _artifact_base_url(self) -> str:
        return self._public_base_url or self.base_url
