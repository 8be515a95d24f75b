"""`mcufleet rollout ...`: the operator's client for the controller's MQTT operator API.

Each subcommand publishes one request on the operator request topic with an MQTT v5 response topic
in the operator's own reply subtree (`ops/reply/<operator>/<request>`, where `<operator>` is the
CN of the client certificate, else the username) and correlation data, waits for the reply, prints
it and exits non-zero when the request was refused. `status` reads the retained rollout state;
`watch` follows it with progress bars. The connection (TLS, client certificate, CA, username and
password) and the signing key come from a profile (`controller.operator_profile`). Requests carry
their issue time and are signed when the profile names a signing key.

Exit codes (`Exit`): 0 done; 1 the controller refused the request (or the watched rollout was
aborted); 2 bad arguments, profile, spec or signing key; 3 no reply or no state in time; 4 the
broker is unreachable (connection refused, no answer, connection lost); 5 a certificate problem
(ours unreadable or refused by the broker, or the broker's not trusted); 6 the broker refused
the login (bad username or password, not authorised); 7 the broker ACL refused a publish or a
subscription (MQTT v5 reason code on PUBACK or SUBACK).
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import logging
import ssl
import sys
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from controller.errors import ConfigError
from controller.operator_auth import sign_request
from controller.operator_profile import Profile, resolve_profile
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
    TopicError,
    TopicKind,
    TopicTree,
    assemble_plan,
    channels,
    is_valid_id,
)


class Exit(enum.IntEnum):
    """The CLI's exit codes (documented in docs/operations.md)."""

    OK = 0
    REJECTED = 1
    USAGE = 2
    NO_ANSWER = 3
    UNREACHABLE = 4
    CERTIFICATE = 5
    LOGIN_REFUSED = 6
    DENIED = 7


TERMINAL = {RolloutStatus.COMPLETED, RolloutStatus.ABORTED}
ANONYMOUS = "anonymous"
"""The reply-subtree name of a client with neither certificate nor username (brokers without ACLs)."""
NOT_AUTHORIZED = 0x87
LOGIN_REASONS = {4: "bad username or password", 5: "not authorised", 0x86: "bad username or password"}


class CliFailure(Exception):
    """A failure the CLI reports in one line and an exit code."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code


class EarlyDisconnect(aiomqtt.MqttError):
    """The connection closed before the broker's CONNACK (the message is paho's last error)."""


class OperatorClient(aiomqtt.Client):
    """aiomqtt's client, keeping what it otherwise drops: PUBACK reason codes, and why a connection died.

    aiomqtt ignores a disconnect before CONNACK and waits for its timeout; with TLS 1.3 that is how
    a broker refusing our certificate looks (its alert comes after our side of the handshake).
    """

    def __init__(self, hostname: str, port: int, **options: Any) -> None:
        quiet = logging.getLogger("mcufleet.rollout.mqtt")
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False  # the CLI says what went wrong in one line, not in paho's words
        super().__init__(hostname, port, logger=quiet, **options)
        self.last_puback_reason = 0
        self.socket_error = ""
        self.connected_once = False
        self._client.on_log = self._on_log

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        self.connected_once = self.connected_once or not reason_code.is_failure
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_log(self, client: paho.Client, userdata: Any, level: int, message: str) -> None:
        if level == paho.MQTT_LOG_ERR:
            self.socket_error = message.removeprefix("failed to receive on socket: ")

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        # One request in flight at a time: the last PUBACK is the request's.
        self.last_puback_reason = reason_code.value
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        if not self._connected.done():
            self._connected.set_exception(EarlyDisconnect(self.socket_error or str(reason_code)))
        super()._on_disconnect(client, userdata, flags, reason_code, properties)


def build_parser() -> argparse.ArgumentParser:
    """The `mcufleet rollout` argument parser (connection flags override the profile)."""
    parser = argparse.ArgumentParser(
        prog="mcufleet rollout",
        description="Drive rollouts over MQTT.",
        epilog="exit codes: 0 done, 1 refused by the controller, 2 usage or profile error, 3 no reply,"
        " 4 broker unreachable, 5 certificate problem, 6 login refused, 7 denied by the broker ACL",
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="profile file (default ~/.config/mcufleet/cli.toml)"
    )
    parser.add_argument("--profile", default="", help="profile name (default: $MCUFLEET_CLI_PROFILE)")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--tls", action="store_const", const=True, default=None)
    parser.add_argument("--ca-file", default=None, help="CA that signed the broker's certificate")
    parser.add_argument("--cert-file", default=None, help="your client certificate (PEM)")
    parser.add_argument("--key-file", default=None, help="your client certificate's key (PEM)")
    parser.add_argument("--username", default=None)
    parser.add_argument("--password", default=None, help="prefer MCUFLEET_CLI_PASSWORD or the profile")
    parser.add_argument("--prefix", default=None)
    parser.add_argument("--operator", default=None, help="your name in requests")
    parser.add_argument("--signing-key-id", default=None)
    parser.add_argument("--signing-key-file", default=None, help="Ed25519 private key (PEM) to sign with")
    parser.add_argument("--timeout", dest="timeout_s", type=float, default=None, help="seconds to wait")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a rollout from a spec file (JSON)")
    create.add_argument("rollout_id")
    create.add_argument("spec", type=Path)
    for name in ("preview", "resume", "status", "watch"):
        commands.add_parser(name).add_argument("rollout_id")
    start = commands.add_parser(
        "start", help="start a rollout: shows the plan it approves and asks first (or --plan-id / --yes)"
    )
    start.add_argument("rollout_id")
    start.add_argument("--plan-id", default="", help="the plan id to approve, as `preview` printed it")
    start.add_argument("--yes", action="store_true", help="approve the plan shown without asking")
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


PROFILE_FLAGS = (
    "host",
    "port",
    "tls",
    "ca_file",
    "cert_file",
    "key_file",
    "username",
    "password",
    "prefix",
    "operator",
    "signing_key_id",
    "signing_key_file",
    "timeout_s",
)


def run(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """Entry point of `mcufleet rollout`."""
    import os  # noqa: PLC0415 (the environment is read here only, tests pass their own)

    args = build_parser().parse_args(list(argv))
    try:
        profile = resolve_profile(
            config_path=args.config,
            profile_name=args.profile,
            environ=os.environ if environ is None else environ,
            flags={name: getattr(args, name) for name in PROFILE_FLAGS if getattr(args, name) is not None},
        )
        return asyncio.run(_main(args, profile))
    except CliFailure as failure:
        sys.stderr.write(f"mcufleet rollout: {failure}\n")
        return failure.code
    except (ConfigError, TopicError) as error:
        sys.stderr.write(f"mcufleet rollout: {error}\n")
        return Exit.USAGE


def tls_context(profile: Profile) -> ssl.SSLContext | None:
    """The TLS context of `profile` (None without TLS).

    Raises:
        CliFailure: the CA, certificate or key cannot be read or do not match.
    """
    if not profile.uses_tls:
        return None
    try:
        context = ssl.create_default_context(cafile=profile.ca_file or None)
    except (OSError, ssl.SSLError) as error:
        raise CliFailure(Exit.CERTIFICATE, f"CA file {profile.ca_file}: {_why(error)}") from None
    if profile.key_file and not profile.cert_file:
        raise CliFailure(Exit.CERTIFICATE, "key_file is set but cert_file is not")
    if profile.cert_file:
        try:
            # An encrypted key would make OpenSSL prompt on the terminal: refuse it instead.
            context.load_cert_chain(profile.cert_file, profile.key_file or None, password=lambda: "")
        except (OSError, ssl.SSLError) as error:
            where = f"{profile.cert_file}" + (f" with key {profile.key_file}" if profile.key_file else "")
            raise CliFailure(Exit.CERTIFICATE, f"client certificate {where}: {_why(error)}") from None
    return context


def reply_identity(profile: Profile) -> str:
    """The name of this operator's reply subtree: what the broker ACL sees as `%u`.

    That is the certificate's CN when there is a certificate (`use_identity_as_username`), else
    the username.

    Raises:
        CliFailure: the certificate is unreadable or its CN is not usable as a topic level.
    """
    if profile.cert_file:
        try:
            certificate = x509.load_pem_x509_certificate(Path(profile.cert_file).read_bytes())
        except (OSError, ValueError) as error:
            raise CliFailure(
                Exit.CERTIFICATE, f"client certificate {profile.cert_file}: {_why(error)}"
            ) from None
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(names[0].value) if names else ""
        if not is_valid_id(name):
            raise CliFailure(
                Exit.CERTIFICATE,
                f"client certificate {profile.cert_file}: CN {name!r} is not an id (letters, digits, ._:@-)",
            )
        return name
    if profile.username:
        if not is_valid_id(profile.username):
            raise CliFailure(
                Exit.USAGE, f"username {profile.username!r} is not an id (letters, digits, ._:@-)"
            )
        return profile.username
    return ANONYMOUS


def _why(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror and not isinstance(error, ssl.SSLError):
        return f"{error.strerror} ({error.filename})" if error.filename else error.strerror
    return str(error) or type(error).__name__


def connect_failure(error: aiomqtt.MqttError, profile: Profile) -> CliFailure:  # noqa: PLR0911 (one return per cause)
    """Tell why the connection failed, from the error aiomqtt raised (it keeps the cause as context)."""
    where = f"{profile.host}:{profile.port}"
    if isinstance(error, MqttConnectError):
        code = error.rc.value if isinstance(error.rc, ReasonCode) else (error.rc or 0)
        if code in LOGIN_REASONS or code == NOT_AUTHORIZED:
            reason = LOGIN_REASONS.get(code, "not authorised")
            return CliFailure(
                Exit.LOGIN_REFUSED, f"broker {where} refused the login: {reason} (reason code {code})"
            )
        return CliFailure(Exit.UNREACHABLE, f"broker {where} refused the connection: {error}")
    if isinstance(error, EarlyDisconnect):
        if "SSL" in str(error) or "alert" in str(error):
            return CliFailure(
                Exit.CERTIFICATE,
                f"broker {where} refused our certificate ({error}): is it signed by the broker's CA,"
                " unexpired, and is its key the right one?",
            )
        return CliFailure(
            Exit.UNREACHABLE, f"broker {where} unreachable: the connection ended before it answered ({error})"
        )
    cause = error.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return CliFailure(
            Exit.CERTIFICATE,
            f"broker {where}: its certificate is not trusted ({cause.verify_message}); check ca_file",
        )
    if isinstance(cause, ssl.SSLError):
        return CliFailure(
            Exit.CERTIFICATE,
            f"broker {where} refused the TLS handshake ({cause.reason or cause}): is your certificate"
            " signed by the broker's CA and not expired?",
        )
    if isinstance(cause, ConnectionRefusedError):
        return CliFailure(Exit.UNREACHABLE, f"broker {where} refused the connection: nothing listens there")
    if isinstance(cause, OSError):
        return CliFailure(Exit.UNREACHABLE, f"broker {where} unreachable: {_why(cause)}")
    return CliFailure(Exit.UNREACHABLE, f"broker {where}: {error}")


def _signing_key(profile: Profile) -> Ed25519PrivateKey | None:
    if not profile.signing_key_file:
        if profile.signing_key_id:
            raise ConfigError("signing_key_id is set but signing_key_file is not")
        return None
    if not profile.signing_key_id:
        raise ConfigError("signing_key_file is set but signing_key_id is not")
    try:
        key = load_pem_private_key(Path(profile.signing_key_file).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise ConfigError(f"signing key {profile.signing_key_file}: {_why(error)}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signing key {profile.signing_key_file}: not an Ed25519 private key")
    return key


async def _main(args: argparse.Namespace, profile: Profile) -> int:
    try:
        tree = TopicTree(profile.prefix)
    except TopicError as error:
        raise ConfigError(f"prefix: {error}") from None
    if not is_valid_id(args.rollout_id):
        raise ConfigError(f"rollout id {args.rollout_id!r} is not an id (letters, digits, ._:@-)")
    signing_key = _signing_key(profile)
    context = tls_context(profile)
    identity = reply_identity(profile)
    client = OperatorClient(
        profile.host,
        profile.port,
        username=profile.username or None,
        password=profile.password or None,
        protocol=aiomqtt.ProtocolVersion.V5,
        identifier=f"{identity}-{uuid.uuid4().hex[:8]}",
        tls_context=context,
        timeout=profile.timeout_s,
    )
    try:
        async with client:
            return await _command(
                client, tree=tree, args=args, profile=profile, identity=identity, signing_key=signing_key
            )
    except aiomqtt.MqttError as error:
        if not client.connected_once:
            raise connect_failure(error, profile) from None
        raise CliFailure(
            Exit.UNREACHABLE, f"lost the broker {profile.host}:{profile.port}: {error}"
        ) from None


async def _command(  # noqa: PLR0911 (one return per way a command ends)
    client: OperatorClient,
    *,
    tree: TopicTree,
    args: argparse.Namespace,
    profile: Profile,
    identity: str,
    signing_key: Ed25519PrivateKey | None,
) -> int:
    timeout_s = profile.timeout_s
    if args.command == "status":
        return await status(client, tree, args.rollout_id, timeout_s)
    if args.command == "watch":
        return await watch(client, tree, args.rollout_id)
    before: object | None = None
    plan_topic = tree.topic(TopicKind.ROLLOUT_PLAN, rollout_id=args.rollout_id)
    if args.command == "preview":
        before = await _retained(client, plan_topic, timeout_s)
    if args.command == "start" and not args.plan_id:
        approved = await _confirm_plan(client, tree, args, timeout_s)
        if isinstance(approved, Exit):
            return approved
        args.plan_id = approved
    request = await _request(client, tree, args, profile)
    if signing_key is not None:
        request = sign_request(request, profile.signing_key_id, signing_key, datetime.now(UTC))
    reply = await send_request(client, tree, request, timeout_s, operator_id=identity)
    if reply is None:
        sys.stderr.write(
            f"no reply from the controller within {timeout_s:.0f} s (replies come on"
            f" {tree.prefix}/ops/reply/{identity}/...: is a controller running?)\n"
        )
        return Exit.NO_ANSWER
    if args.command != "preview" or reply.status is not ReplyStatus.ACCEPTED:
        sys.stdout.write(f"{reply.status}: {reply.reason or 'ok'} {reply.message}".rstrip() + "\n")
        return Exit.OK if reply.status is ReplyStatus.ACCEPTED else Exit.REJECTED
    after = before.created_at if isinstance(before, RolloutPlanSummary) else None
    plan = await read_plan(client, tree, args.rollout_id, timeout_s, after=after)
    if plan is None:
        sys.stderr.write("the controller accepted but published no new plan in time\n")
        return Exit.NO_ANSWER
    print_plan(plan, Console())
    return Exit.OK


async def _confirm_plan(
    client: aiomqtt.Client, tree: TopicTree, args: argparse.Namespace, timeout_s: float
) -> str | Exit:
    """Show the plan a start would approve; its id once `--yes` or the operator confirms it.

    The controller refuses a start without a plan id, so what starts is always a plan someone saw.
    """
    plan = await read_plan(client, tree, args.rollout_id, timeout_s)
    if plan is None:
        sys.stderr.write(f"no plan published for {args.rollout_id}: run `mcufleet rollout preview` first\n")
        return Exit.REJECTED
    print_plan(plan, Console(stderr=True), hint=False)
    if args.yes:
        return plan.plan_id
    if not sys.stdin.isatty():
        sys.stderr.write(f"not started: confirm plan {plan.plan_id} with --yes or --plan-id {plan.plan_id}\n")
        return Exit.USAGE
    answer = await asyncio.to_thread(input, f"start plan {plan.plan_id}? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        sys.stderr.write("not started\n")
        return Exit.REJECTED
    return plan.plan_id


async def _request(  # noqa: PLR0911 (one return per subcommand)
    client: aiomqtt.Client, tree: TopicTree, args: argparse.Namespace, profile: Profile
) -> OperatorRequest:
    common: dict[str, Any] = {
        "request_id": RequestId(f"req-{uuid.uuid4().hex[:16]}"),
        "operator": profile.operator,
        "issued_at": datetime.now(UTC),
    }
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
            return StartRollout(**common, rollout_id=rollout_id, plan_id=args.plan_id)
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


async def subscribe_or_fail(client: aiomqtt.Client, topic: str) -> None:
    """Subscribe at QoS 1.

    Raises:
        CliFailure: the broker refused the subscription (a SUBACK reason code of 0x80 or more).
    """
    for code in await client.subscribe(topic, qos=1):
        value = code.value if isinstance(code, ReasonCode) else int(code)
        if value >= 0x80:  # MQTT 5 §3.9.3: reason codes from 0x80 are failures
            raise CliFailure(
                Exit.DENIED, f"the broker refused the subscription to {topic}: {code} (reason code {value})"
            )


async def send_request(
    client: aiomqtt.Client,
    tree: TopicTree,
    request: OperatorRequest,
    timeout_s: float,
    *,
    operator_id: str = ANONYMOUS,
) -> OperatorReply | None:
    """Publish `request` and wait for its reply (None when none came within `timeout_s`).

    The reply comes on `ops/reply/<operator_id>/<request id>`, or, when the controller refused the
    response topic, on the default reply topic `ops/reply/<request id>`; both are followed.

    Raises:
        CliFailure: the broker ACL refused the request or a reply subscription (`OperatorClient` only
            sees PUBACK reason codes).
    """
    reply_topic = tree.topic(TopicKind.OPERATOR_REPLY, operator_id=operator_id, request_id=request.request_id)
    default_topic = tree.topic(TopicKind.OPERATOR_DEFAULT_REPLY, request_id=request.request_id)
    await subscribe_or_fail(client, reply_topic)
    await subscribe_or_fail(client, default_topic)
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.ResponseTopic = reply_topic
    properties.CorrelationData = request.request_id.encode()
    request_topic = tree.topic(TopicKind.OPERATOR_REQUEST)
    if isinstance(client, OperatorClient):
        client.last_puback_reason = 0
    await client.publish(request_topic, channels.encode(request), qos=1, properties=properties)
    if isinstance(client, OperatorClient) and client.last_puback_reason >= 0x80:
        code = client.last_puback_reason
        why = "not authorised by the broker ACL" if code == NOT_AUTHORIZED else f"reason code {code:#x}"
        raise CliFailure(
            Exit.DENIED, f"the broker refused the request on {request_topic}: {why} (reason code {code})"
        )
    try:
        async with asyncio.timeout(timeout_s):
            async for message in client.messages:
                if message.topic.value in (reply_topic, default_topic) and isinstance(message.payload, bytes):
                    try:
                        return channels.decode_as(TopicKind.OPERATOR_REPLY, message.payload, OperatorReply)
                    except ContractError:
                        continue
    except TimeoutError:
        return None
    return None


async def _retained(client: aiomqtt.Client, topic: str, timeout_s: float) -> object | None:
    await subscribe_or_fail(client, topic)
    try:
        async with asyncio.timeout(min(timeout_s, 3.0)):
            async for message in client.messages:
                if message.topic.value == topic and isinstance(message.payload, bytes) and message.payload:
                    await client.unsubscribe(topic)
                    return channels.decode(_kind(topic), message.payload, topic)
    except TimeoutError:
        return None
    return None


async def status(client: aiomqtt.Client, tree: TopicTree, rollout_id: str, timeout_s: float) -> int:
    """Print the retained rollout state as JSON."""
    state = await _retained(client, tree.topic(TopicKind.ROLLOUT_STATE, rollout_id=rollout_id), timeout_s)
    if not isinstance(state, msgspec.Struct):
        sys.stderr.write(f"no state published for rollout {rollout_id}\n")
        return Exit.NO_ANSWER
    sys.stdout.write(msgspec.json.format(channels.encode(state)).decode() + "\n")
    return Exit.OK


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
    await subscribe_or_fail(client, summary_topic)
    await subscribe_or_fail(client, pages_filter)
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


def print_plan(plan: RolloutPlan, console: Console, *, hint: bool = True) -> None:
    """The plan an operator approves: waves with their gateways, exclusions, the estimate."""
    devices = sum(len(wave.devices) for wave in plan.waves)
    console.print(
        f"plan {plan.plan_id}: {plan.software_type} {plan.target_version}, {devices} devices in "
        f"{len(plan.waves)} waves, image {plan.image_size_bytes} bytes, "
        f"estimated {plan.estimated_duration_s:.0f} s"
    )
    table = Table("wave", "devices", "gateways", "soak (s)", "expected start", "expected end")
    for wave in plan.waves:
        per_gateway: dict[str, int] = {}
        for device in wave.devices:
            per_gateway[device.gateway_id] = per_gateway.get(device.gateway_id, 0) + 1
        spread = ", ".join(f"{gateway} {count}" for gateway, count in sorted(per_gateway.items()))
        table.add_row(
            str(wave.index),
            str(len(wave.devices)),
            spread,
            f"{wave.soak_s:.0f}",
            _when(wave.expected_start),
            _when(wave.expected_end),
        )
    console.print(table)
    for excluded in plan.excluded:
        console.print(f"excluded {excluded.device_serial}: {excluded.reason}")
    if hint:
        console.print(f"start it with: mcufleet rollout start {plan.rollout_id} --plan-id {plan.plan_id}")


def _when(moment: datetime | None) -> str:
    """A UTC minute, or why there is none."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment is not None else "no window opens"


def _kind(topic: str) -> TopicKind:
    return TopicKind.ROLLOUT_PLAN if topic.endswith("/plan") else TopicKind.ROLLOUT_STATE


async def watch(
    client: aiomqtt.Client, tree: TopicTree, rollout_id: str, console: Console | None = None
) -> int:
    """Show live progress per wave and per gateway until the rollout completes or is aborted."""
    console = console or Console(stderr=True)
    topic = tree.topic(TopicKind.ROLLOUT_STATE, rollout_id=rollout_id)
    await subscribe_or_fail(client, topic)
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
                return Exit.OK if state.status is RolloutStatus.COMPLETED else Exit.REJECTED
    return Exit.NO_ANSWER
