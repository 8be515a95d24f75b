"""Alerts reach someone: Debian's Prometheus and Alertmanager deliver a tripped gate to a webhook.

A rollout of a bad build runs through a real mosquitto, simulated devices, an agent and the
controller; its failure gate pauses it. Prometheus (deploy/prometheus, intervals of one second)
scrapes both services and sends to Alertmanager, which runs deploy/alertmanager/alertmanager.yml
with only its timings shortened and its receivers' URLs pointed at a webhook server of the test.
The alert must arrive at the on-call receiver with the rollout's labels. A second test posts a
broker outage and a per-gateway alert to Alertmanager and proves the inhibition and its release.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from schemas import GateSpec, RolloutSpec, WaveSpec
from simulator.device import FaultPlan
from tests.deploy.test_alertmanager import ALERTMANAGER_CONFIG
from tests.deploy.test_prometheus_live import (
    CONTROLLER_JOB,
    all_scraped,
    running_prometheus,
    scraped_fleet,
)
from tests.harness.ports import free_tcp_port
from tests.harness.ready_process import ready_process
from tests.integration.world import (
    create_and_start,
    publish_release,
    registry_has,
    wait_until,
)

pytestmark = pytest.mark.integration
START_WAIT_S = 20.0
DELIVERY_WAIT_S = 60.0
ROLLOUT = "r-alert"
GATEWAY = "gw-0"

Notification = dict[str, Any]


class WebhookReceiver:
    """An HTTP server on loopback that keeps every notification Alertmanager posts, by path."""

    def __init__(self) -> None:
        """Bind to a free loopback port (serving starts with `serve`)."""
        self.received: list[tuple[str, Notification]] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._changed:
                    receiver.received.append((self.path, json.loads(body)))
                    receiver._changed.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the test reports what arrived."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"

    @contextlib.contextmanager
    def serve(self) -> Iterator[WebhookReceiver]:
        """Serve in a thread until the block ends."""
        thread = threading.Thread(target=self._server.serve_forever, name="webhook", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join()

    def wait_for(self, matches: Callable[[str, Notification], bool], timeout_s: float) -> Notification:
        """Block until a notification satisfies `matches(path, notification)`; return it."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: next((n for path, n in self.received if matches(path, n)), None), timeout_s
            )
        if found is None:
            raise AssertionError(f"no matching notification in {timeout_s} s; received {self.received}")
        return found

    async def arrival(self, matches: Callable[[str, Notification], bool], timeout_s: float) -> Notification:
        """`wait_for` without blocking the event loop (the services under test run on it)."""
        return await asyncio.to_thread(self.wait_for, matches, timeout_s)


def alertmanager_config(tmp_path: Path, webhook: WebhookReceiver) -> Path:
    """deploy/alertmanager/alertmanager.yml with second-scale timings and webhooks into the test.

    Routes, matchers, grouping labels and inhibition stay as shipped. Each receiver's URL keeps its
    path, so the path a notification arrives on says which receiver Alertmanager chose.
    """
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for route in [config["route"], *config["route"].get("routes", [])]:
        route |= {"group_wait": "0s", "group_interval": "1s", "repeat_interval": "1h"}
    for receiver in config["receivers"]:
        for webhook_config in receiver["webhook_configs"]:
            webhook_config["url"] = webhook.base_url + urlsplit(webhook_config["url"]).path
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def receiver_path(name: str) -> str:
    """The URL path the shipped config gives receiver `name`."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    receiver = next(r for r in config["receivers"] if r["name"] == name)
    return urlsplit(str(receiver["webhook_configs"][0]["url"])).path


@contextlib.asynccontextmanager
async def running_alertmanager(
    tmp_path: Path, webhook: WebhookReceiver, http: httpx.AsyncClient
) -> AsyncIterator[str]:
    """Debian's Alertmanager, ready, without clustering (no gossip port); yields its host:port."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.fail("alertmanager not found: run `make test` (it installs prometheus-alertmanager)")
    address = f"127.0.0.1:{free_tcp_port()}"
    argv = (
        binary,
        f"--config.file={alertmanager_config(tmp_path, webhook)}",
        f"--storage.path={tmp_path / 'alertmanager-data'}",
        f"--web.listen-address={address}",
        "--cluster.listen-address=",
    )
    log_path = tmp_path / "alertmanager.log"
    async with ready_process(
        "alertmanager",
        argv,
        log_path=log_path,
        ready_url=f"http://{address}/-/ready",
        http=http,
        timeout_s=START_WAIT_S,
    ):
        yield address


def firing(alertname: str, **labels: str) -> Callable[[str, Notification], bool]:
    """Matches a notification that carries `alertname` firing with (at least) these labels."""

    def matches(_path: str, notification: Notification) -> bool:
        return any(
            alert["status"] == "firing"
            and alert["labels"].get("alertname") == alertname
            and labels.items() <= alert["labels"].items()
            for alert in notification["alerts"]
        )

    return matches


async def test_a_tripped_failure_gate_pages_the_on_call_with_the_rollouts_labels(tmp_path: Path) -> None:
    """A bad build pauses the rollout; its alert reaches the on-call webhook, labelled by rollout."""
    serials = [f"DEV-{i}" for i in range(4)]
    webhook = WebhookReceiver()
    async with scraped_fleet(tmp_path, serials) as fleet:
        cloud, devices, controller = fleet.cloud, fleet.devices, fleet.controller
        client, http = fleet.client, fleet.http
        targets, controller_target = fleet.targets, fleet.targets[CONTROLLER_JOB]
        with webhook.serve():
            async with (
                running_alertmanager(tmp_path, webhook, http) as alertmanager,
                running_prometheus(tmp_path, targets, http, alertmanager) as prometheus,
            ):
                await wait_until(lambda: all_scraped(http, prometheus, set(targets)), START_WAIT_S)
                publish_release(cloud, "1.1.0")
                for serial in serials:
                    devices.device(serial).faults = FaultPlan(bad_build_versions=frozenset({"1.1.0"}))
                await wait_until(lambda: registry_has(controller, len(serials)))
                spec = RolloutSpec(
                    software_type="app",
                    target_version="1.1.0",
                    waves=[WaveSpec(percent=50), WaveSpec(percent=100)],
                    gates=GateSpec(failure_min_sample=2, failure_threshold=0.2),
                )
                await create_and_start(client, ROLLOUT, spec)
                notification = await webhook.arrival(
                    firing("McufleetRolloutPausedByGate", rollout=ROLLOUT), DELIVERY_WAIT_S
                )
    path = next(p for p, n in webhook.received if n is notification)
    assert path == receiver_path("fleet-oncall") and notification["receiver"] == "fleet-oncall"
    assert notification["groupLabels"] == {"alertname": "McufleetRolloutPausedByGate", "rollout": ROLLOUT}
    (alert,) = notification["alerts"]
    assert alert["labels"] == {
        "alertname": "McufleetRolloutPausedByGate",
        "rollout": ROLLOUT,
        "verdict": "pause",
        "severity": "critical",
        "job": CONTROLLER_JOB,
        "instance": controller_target,
    }
    assert alert["annotations"]["summary"] == f"Rollout {ROLLOUT} is held by its failure gate (verdict pause)"


async def test_a_broker_outage_holds_back_per_gateway_alerts_until_it_resolves(tmp_path: Path) -> None:
    """While the broker alert fires, a gateway's alert is inhibited; once it resolves, it is sent."""
    webhook = WebhookReceiver()
    broker_alert = {"alertname": "McufleetBrokerUnreachable", "severity": "critical"}
    gateway_alert = {
        "alertname": "McufleetAgentDisconnectedFromBroker",
        "severity": "warning",
        "scope": "gateway",
        "gateway": "gw-7",
        "site": "site-a",
    }
    started = datetime.now(UTC).isoformat()
    async with httpx.AsyncClient(timeout=10) as http:
        with webhook.serve():
            async with running_alertmanager(tmp_path, webhook, http) as alertmanager:
                api = f"http://{alertmanager}/api/v2"

                async def post(*alerts: dict[str, Any]) -> None:
                    response = await http.post(f"{api}/alerts", json=list(alerts))
                    assert response.status_code == 200, response.text

                await post({"labels": broker_alert, "startsAt": started})
                await webhook.arrival(firing(broker_alert["alertname"]), DELIVERY_WAIT_S)
                await post({"labels": gateway_alert, "startsAt": started})

                # The API decides inhibition when asked, so the alert's status is final once it is listed.
                async def listed() -> list[dict[str, Any]]:
                    alerts: list[dict[str, Any]] = (await http.get(f"{api}/alerts")).json()
                    return [a for a in alerts if a["labels"] == gateway_alert]

                async def is_listed() -> bool:
                    return bool(await listed())

                await wait_until(is_listed, timeout_s=DELIVERY_WAIT_S)
                (status,) = [a["status"] for a in await listed()]
                assert status["state"] == "suppressed" and status["inhibitedBy"], status
                assert not any(firing(gateway_alert["alertname"])(p, n) for p, n in webhook.received)
                ended = datetime.now(UTC).isoformat()
                await post({"labels": broker_alert, "startsAt": started, "endsAt": ended})
                notification = await webhook.arrival(
                    firing(gateway_alert["alertname"], gateway="gw-7"), DELIVERY_WAIT_S
                )
    assert notification["receiver"] == "fleet-operators"
    assert notification["groupLabels"] == {"alertname": gateway_alert["alertname"], "site": "site-a"}
