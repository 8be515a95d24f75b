"""`mcufleet rollout ...`: the operator's client for the controller's MQTT operator API.

Each subcommand publishes one request on the operator request topic with an MQTT v5 response topic
and correlation data, waits for the reply, prints it and exits non-zero when the request was
rejected. `status` reads the retained rollout state; `watch` follows it with progress bars.
Requests are signed when `--key-file` names an Ed25519 private key (PEM) and `--key-id` its id.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import aiomqtt
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from controller.errors import ConfigError
from controller.operator_auth import sign_request
from schemas import (
    AbortRollout,
    CancelDevice,
    ContractError,
    CreateRollout,
    OperatorReply,
    OperatorRequest,
    PauseRollout,
    PreviewRollout,
    ReplyStatus,
    RequestId,
    ResumeRollout,
    RetryFailed,
    RolloutId,
    RolloutPlan,
    RolloutPlanPage,
    RolloutPlanSummary,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    StartRollout,
    TopicKind,
    TopicTree,
    assemble_plan,
    channels,
)

EXIT_REJECTED = 1
EXIT_NO_ANSWER = 3
EXIT_USAGE = 2
TERMINAL = {RolloutStatus.COMPLETED, RolloutStatus.ABORTED}


def build_parser() -> argparse.ArgumentParser:
    """The `mcufleet rollout` argument parser."""
    parser = argparse.ArgumentParser(prog="mcufleet rollout", description="Drive rollouts over MQTT.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--username", default="operator")
    parser.add_argument("--password", default="")
    parser.add_argument("--prefix", default="mcufleet/v1")
    parser.add_argument("--operator", default="", help="your name, recorded in the audit log")
    parser.add_argument("--key-id", default="")
    parser.add_argument("--key-file", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the reply")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a rollout from a spec file (JSON)")
    create.add_argument("rollout_id")
    create.add_argument("spec", type=Path)
    for name in ("preview", "resume", "status", "watch"):
        commands.add_parser(name).add_argument("rollout_id")
    start = commands.add_parser("start", help="start a rollout, approving its current plan")
    start.add_argument("rollout_id")
    start.add_argument("--plan-id", default="", help="default: the plan currently published")
    for name in ("pause", "abort"):
        sub = commands.add_parser(name)
        sub.add_argument("rollout_id")
        sub.add_argument("--reason", default="")
    cancel = commands.add_parser("cancel-device")
    cancel.add_argument("rollout_id")
    cancel.add_argument("serial")
    retry = commands.add_parser("retry-failed")
    retry.add_argument("rollout_id")
    retry.add_argument("serials", nargs="*")
    return parser


def run(argv: Sequence[str]) -> int:
    """Entry point of `mcufleet rollout`."""
    args = build_parser().parse_args(list(argv))
    try:
        return asyncio.run(_main(args))
    except aiomqtt.MqttError as error:
        sys.stderr.write(f"mcufleet rollout: broker: {error}\n")
        return EXIT_NO_ANSWER
    except ConfigError as error:
        sys.stderr.write(f"mcufleet rollout: {error}\n")
        return EXIT_USAGE


async def _main(args: argparse.Namespace) -> int:
    tree = TopicTree(args.prefix)
    async with aiomqtt.Client(
        args.host,
        args.port,
        username=args.username or None,
        password=args.password or None,
        protocol=aiomqtt.ProtocolVersion.V5,
        identifier=f"operator-{uuid.uuid4().hex[:8]}",
    ) as client:
        if args.command == "status":
            return await status(client, tree, args)
        if args.command == "watch":
            return await watch(client, tree, args.rollout_id)
        if args.command == "preview":
            return await preview(client, tree, args)
        request = await _request(client, tree, args)
        if args.key_file is not None:
            key = load_pem_private_key(args.key_file.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                sys.stderr.write("--key-file must hold an Ed25519 private key\n")
                return EXIT_REJECTED
            request = sign_request(request, args.key_id, key)
        reply = await send_request(client, tree, request, args.timeout)
    if reply is None:
        sys.stderr.write("no reply from the controller\n")
        return EXIT_NO_ANSWER
    sys.stdout.write(f"{reply.status}: {reply.reason or 'ok'} {reply.message}\n".rstrip() + "\n")
    return 0 if reply.status is ReplyStatus.ACCEPTED else EXIT_REJECTED


async def _request(  # noqa: PLR0911 (one return per subcommand)
    client: aiomqtt.Client, tree: TopicTree, args: argparse.Namespace
) -> OperatorRequest:
    common = {"request_id": RequestId(f"req-{uuid.uuid4().hex[:16]}"), "operator": args.operator}
    rollout_id = RolloutId(args.rollout_id)
    match args.command:
        case "create":
            try:
                spec = msgspec.json.decode(args.spec.read_bytes(), type=RolloutSpec)
            except (OSError, msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as error:
                raise ConfigError(f"spec file {args.spec}: {error}") from None
            return CreateRollout(**common, rollout_id=rollout_id, spec=spec)
        case "preview":
            return PreviewRollout(**common, rollout_id=rollout_id)
        case "start":
            plan_id = args.plan_id
            if not plan_id:
                plan = await _retained(
                    client, tree.topic(TopicKind.ROLLOUT_PLAN, rollout_id=rollout_id), args.timeout
                )
                plan_id = plan.plan_id if isinstance(plan, RolloutPlanSummary) else ""
            return StartRollout(**common, rollout_id=rollout_id, plan_id=plan_id)
        case "pause":
            return PauseRollout(**common, rollout_id=rollout_id, reason=args.reason)
        case "resume":
            return ResumeRollout(**common, rollout_id=rollout_id)
        case "abort":
            return AbortRollout(**common, rollout_id=rollout_id, reason=args.reason)
        case "cancel-device":
            return CancelDevice(**common, rollout_id=rollout_id, device_serial=args.serial)
        case "retry-failed":
            return RetryFailed(**common, rollout_id=rollout_id, device_serials=list(args.serials))
    raise ValueError(f"unknown command {args.command}")


async def send_request(
    client: aiomqtt.Client, tree: TopicTree, request: OperatorRequest, timeout_s: float
) -> OperatorReply | None:
    """Publish `request` and wait for its reply (None when none came within `timeout_s`)."""
    reply_topic = tree.topic(TopicKind.OPERATOR_REPLY, request_id=request.request_id)
    await client.subscribe(reply_topic, qos=1)
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.ResponseTopic = reply_topic
    properties.CorrelationData = request.request_id.encode()
    await client.publish(
        tree.topic(TopicKind.OPERATOR_REQUEST), channels.encode(request), qos=1, properties=properties
    )
    try:
        async with asyncio.timeout(timeout_s):
            async for message in client.messages:
                if message.topic.value == reply_topic and isinstance(message.payload, bytes):
                    return channels.decode_as(TopicKind.OPERATOR_REPLY, message.payload, OperatorReply)
    except TimeoutError:
        return None
    return None


async def _retained(client: aiomqtt.Client, topic: str, timeout_s: float) -> object | None:
    await client.subscribe(topic, qos=1)
    try:
        async with asyncio.timeout(min(timeout_s, 3.0)):
            async for message in client.messages:
                if message.topic.value == topic and isinstance(message.payload, bytes) and message.payload:
                    await client.unsubscribe(topic)
                    return channels.decode(_kind(topic), message.payload, topic)
    except TimeoutError:
        return None
    return None


async def status(client: aiomqtt.Client, tree: TopicTree, args: argparse.Namespace) -> int:
    """Print the retained rollout state as JSON."""
    state = await _retained(
        client, tree.topic(TopicKind.ROLLOUT_STATE, rollout_id=args.rollout_id), args.timeout
    )
    if not isinstance(state, msgspec.Struct):
        sys.stderr.write(f"no state published for rollout {args.rollout_id}\n")
        return EXIT_NO_ANSWER
    sys.stdout.write(msgspec.json.format(channels.encode(state)).decode() + "\n")
    return 0


async def preview(client: aiomqtt.Client, tree: TopicTree, args: argparse.Namespace) -> int:
    """Ask for a fresh plan, wait for it on the plan topic and print it."""
    topic = tree.topic(TopicKind.ROLLOUT_PLAN, rollout_id=args.rollout_id)
    before = await _retained(client, topic, args.timeout)
    reply = await send_request(client, tree, await _request(client, tree, args), args.timeout)
    if reply is None:
        sys.stderr.write("no reply from the controller\n")
        return EXIT_NO_ANSWER
    if reply.status is not ReplyStatus.ACCEPTED:
        sys.stdout.write(f"{reply.status}: {reply.reason} {reply.message}".rstrip() + "\n")
        return EXIT_REJECTED
    after = before.created_at if isinstance(before, RolloutPlanSummary) else None
    plan = await read_plan(client, tree, args.rollout_id, args.timeout, after=after)
    if plan is None:
        sys.stderr.write("the controller accepted but published no new plan in time\n")
        return EXIT_NO_ANSWER
    print_plan(plan, Console())
    return 0


async def read_plan(
    client: aiomqtt.Client,
    tree: TopicTree,
    rollout_id: str,
    timeout_s: float,
    *,
    after: datetime | None = None,
) -> RolloutPlan | None:
    """A rollout's whole plan, from its retained summary and pages (one created after `after`)."""
    summary_topic = tree.topic(TopicKind.ROLLOUT_PLAN, rollout_id=rollout_id)
    pages_filter = tree.filter(TopicKind.ROLLOUT_PLAN_PAGE, rollout_id=rollout_id)
    summary: RolloutPlanSummary | None = None
    pages: dict[str, dict[int, RolloutPlanPage]] = {}
    await client.subscribe(summary_topic, qos=1)
    await client.subscribe(pages_filter, qos=1)
    try:
        async with asyncio.timeout(timeout_s):
            async for message in client.messages:
                topic, payload = message.topic.value, message.payload
                if not isinstance(payload, bytes) or not payload:
                    continue
                try:
                    if topic == summary_topic:
                        found = channels.decode_as(TopicKind.ROLLOUT_PLAN, payload, RolloutPlanSummary, topic)
                        if after is None or found.created_at > after:
                            summary = found
                    elif message.topic.matches(pages_filter):
                        page = channels.decode_as(
                            TopicKind.ROLLOUT_PLAN_PAGE, payload, RolloutPlanPage, topic
                        )
                        pages.setdefault(page.plan_id, {})[page.page] = page
                except ContractError:
                    continue
                if summary is not None and (plan := assemble_plan(summary, pages.get(summary.plan_id, {}))):
                    return plan
    except TimeoutError:
        return None
    finally:
        await client.unsubscribe(summary_topic)
        await client.unsubscribe(pages_filter)
    return None


def print_plan(plan: RolloutPlan, console: Console) -> None:
    """The plan an operator approves: waves with their gateways, exclusions, the estimate."""
    devices = sum(len(wave.devices) for wave in plan.waves)
    console.print(
        f"plan {plan.plan_id}: {plan.software_type} {plan.target_version}, {devices} devices in "
        f"{len(plan.waves)} waves, image {plan.image_size_bytes} bytes, "
        f"estimated {plan.estimated_duration_s:.0f} s"
    )
    table = Table("wave", "devices", "gateways", "soak (s)")
    for wave in plan.waves:
        per_gateway: dict[str, int] = {}
        for device in wave.devices:
            per_gateway[device.gateway_id] = per_gateway.get(device.gateway_id, 0) + 1
        spread = ", ".join(f"{gateway} {count}" for gateway, count in sorted(per_gateway.items()))
        table.add_row(str(wave.index), str(len(wave.devices)), spread, f"{wave.soak_s:.0f}")
    console.print(table)
    for excluded in plan.excluded:
        console.print(f"excluded {excluded.device_serial}: {excluded.reason}")
    console.print(f"start it with: mcufleet rollout start {plan.rollout_id} --plan-id {plan.plan_id}")


def _kind(topic: str) -> TopicKind:
    return TopicKind.ROLLOUT_PLAN if topic.endswith("/plan") else TopicKind.ROLLOUT_STATE


async def watch(
    client: aiomqtt.Client, tree: TopicTree, rollout_id: str, console: Console | None = None
) -> int:
    """Show live progress per wave and per gateway until the rollout completes or is aborted."""
    console = console or Console(stderr=True)
    topic = tree.topic(TopicKind.ROLLOUT_STATE, rollout_id=rollout_id)
    await client.subscribe(topic, qos=1)
    tasks: dict[str, TaskID] = {}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} {task.fields[detail]}"),
    )
    with Progress(*columns, console=console) as progress:

        def show(key: str, total: int, done: int, detail: str) -> None:
            if key not in tasks:
                tasks[key] = progress.add_task(key, total=total, detail="")
            progress.update(tasks[key], total=total, completed=done, detail=detail)

        async for message in client.messages:
            if not isinstance(message.payload, bytes) or not message.payload:
                continue
            try:
                state = channels.decode_as(TopicKind.ROLLOUT_STATE, message.payload, RolloutState)
            except ContractError as error:
                console.print(f"ignoring an unreadable rollout state: {error}")
                continue
            for wave in state.waves:
                counts = wave.counts
                done = counts.succeeded + counts.failed + counts.rejected + counts.reverted
                done += counts.timed_out + counts.canceled
                failed = done - counts.succeeded
                detail = f"ok {counts.succeeded} failed {failed} in flight {counts.in_flight}"
                show(f"wave {wave.index}", wave.size, done, detail)
            for gateway in state.gateways:
                # A gateway's bar: its finished attempts out of finished plus in flight.
                finished = gateway.succeeded + gateway.failed
                detail = f"ok {gateway.succeeded} failed {gateway.failed} in flight {gateway.in_flight}"
                show(f"gateway {gateway.gateway_id}", finished + gateway.in_flight, finished, detail)
            if state.status in TERMINAL:
                console.print(f"rollout {rollout_id} {state.status}")
                return 0 if state.status is RolloutStatus.COMPLETED else EXIT_REJECTED
    return EXIT_NO_ANSWER
