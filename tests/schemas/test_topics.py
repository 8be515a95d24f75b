"""The topic tree: builders, parser, filters and the id rules that keep topics safe."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import SPECS, TopicError, TopicKind, TopicTree, is_valid_id

TREE = TopicTree()
IDS = {
    "gateway_id": "gw-1",
    "device_serial": "65071B2E77FB7451",
    "job_id": "job-9",
    "rollout_id": "r-1",
    "request_id": "req.1",
    "controller_id": "ctl-a",
    "operator_id": "alice",
    "page": "3",
}


def _ids_for(kind: TopicKind) -> dict[str, str]:
    names = [level[1:-1] for level in SPECS[kind].template.split("/") if level.startswith("{")]
    return {name: IDS[name] for name in names}


@pytest.mark.parametrize("kind", list(TopicKind))
def test_every_topic_round_trips(kind: TopicKind) -> None:
    """Building a topic and parsing it back gives the same kind and ids."""
    ids = _ids_for(kind)
    topic = TREE.topic(kind, **ids)
    route = TREE.parse(topic)
    assert route.kind is kind
    for name, value in ids.items():
        assert getattr(route, name) == value


def test_prefix_is_configurable() -> None:
    """A deployment can put the whole tree under its own prefix."""
    tree = TopicTree("acme/fleet/v1")
    topic = tree.topic(TopicKind.GATEWAY_COMMAND, gateway_id="gw-9")
    assert topic == "acme/fleet/v1/gw/gw-9/command"
    assert tree.parse(topic).gateway_id == "gw-9"
    with pytest.raises(TopicError):
        TREE.parse(topic)


@pytest.mark.parametrize("prefix", ["", "a/+/b", "a/#", "a//b", "$SYS/x", "a b"])
def test_bad_prefix_is_refused(prefix: str) -> None:
    """A prefix with wildcards, empty levels or `$` is refused at construction."""
    with pytest.raises(TopicError):
        TopicTree(prefix)


@pytest.mark.parametrize(
    "hostile",
    ["+", "#", "a/b", "a+b", "$SYS", "", "x" * 65, "a\x00b", "tab\tid", "new\nline", "sp ace", "é"],
)
def test_hostile_ids_are_refused_by_builders(hostile: str) -> None:
    """Wildcards, separators, control characters, `$`, white space and over-long ids never reach a topic."""
    with pytest.raises(TopicError):
        TREE.topic(TopicKind.GATEWAY_COMMAND, gateway_id=hostile)


@pytest.mark.parametrize(
    "topic",
    [
        "mcufleet/v1/gw/gw-1/command/extra",
        "mcufleet/v1/gw/gw-1",
        "mcufleet/v2/gw/gw-1/command",
        "mcufleet/v1/gw/$SYS/command",
        "mcufleet/v1/gw/+/command",
        "mcufleet/v1/unknown",
        "",
    ],
)
def test_foreign_topics_do_not_parse(topic: str) -> None:
    """Topics outside the tree or carrying invalid ids are refused by the parser."""
    with pytest.raises(TopicError):
        TREE.parse(topic)


def test_builder_refuses_missing_and_extra_ids() -> None:
    """A builder names the id it is missing and refuses ids the topic has no level for."""
    with pytest.raises(TopicError, match="gateway_id"):
        TREE.topic(TopicKind.GATEWAY_COMMAND)
    with pytest.raises(TopicError, match="job_id"):
        TREE.topic(TopicKind.GATEWAY_COMMAND, gateway_id="gw-1", job_id="j")


def test_filters_use_single_level_wildcards_for_free_ids() -> None:
    """Subscription filters fix the given ids and wildcard the others, one level each."""
    assert TREE.filter(TopicKind.JOB_RESULT) == "mcufleet/v1/gw/+/job/+/result"
    assert TREE.filter(TopicKind.DEVICE_REPORT, gateway_id="gw-2") == "mcufleet/v1/gw/gw-2/device/+"


def test_qos_and_retain_are_declared_for_every_topic() -> None:
    """Presence, reports and rollout state are retained; progress is QoS 0; commands are QoS 1."""
    assert SPECS[TopicKind.GATEWAY_PRESENCE].retain
    assert SPECS[TopicKind.DEVICE_REPORT].retain
    assert SPECS[TopicKind.ROLLOUT_STATE].retain
    assert not SPECS[TopicKind.DEVICE_CREDENTIAL].retain
    assert SPECS[TopicKind.JOB_PROGRESS].qos == 0
    assert SPECS[TopicKind.GATEWAY_COMMAND].qos == 1
    assert SPECS[TopicKind.JOB_RESULT].qos == 1


def test_gateway_writes_stay_under_its_own_subtree() -> None:
    """Every topic a gateway publishes lives under gw/<its id>/, so one ACL pattern confines it."""
    for spec in SPECS.values():
        if spec.publisher.value == "gateway":
            assert spec.template.startswith("gw/{gateway_id}/")


@given(st.text(max_size=80))
def test_any_text_is_either_a_valid_id_or_refused(candidate: str) -> None:
    """For any string, the builder either accepts it as-is (a valid id) or raises TopicError."""
    if is_valid_id(candidate):
        topic = TREE.topic(TopicKind.GATEWAY_PRESENCE, gateway_id=candidate)
        assert TREE.parse(topic).gateway_id == candidate
        assert not any(c in candidate for c in "/+#$\x00 ")
    else:
        with pytest.raises(TopicError):
            TREE.topic(TopicKind.GATEWAY_PRESENCE, gateway_id=candidate)


@given(st.lists(st.text(max_size=12), max_size=8).map("/".join))
def test_parser_never_crashes(topic: str) -> None:
    """Arbitrary topic strings parse or raise TopicError, nothing else."""
    try:
        route = TREE.parse(topic)
    except TopicError:
        return
    assert route.kind in set(TopicKind)
