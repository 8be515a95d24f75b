"""The link model and every scripted fault knob, on a pure device with explicit time."""

import hashlib

import pytest

from simulator.device import DevicePhase, FaultPlan, LinkProfile
from simulator.device.calibration import native_sim_udp_device
from simulator.device.link import UDP_MTU_BYTES
from tests.simulator.frames import NEW, body, echo_of_size, exchange, make_device, reply, request

ECHO = request(0, 0, {"d": "x" * 100}, op=2)  # 8 + 106 bytes; the reply is 8 + 107
PARAMS = request(0, 6)


def first_chunk(data_end: int = 1000) -> bytes:
    """The first upload chunk of NEW."""
    sha = hashlib.sha256(NEW).digest()
    return request(1, 1, {"off": 0, "data": NEW[:data_end], "len": len(NEW), "sha": sha}, op=2)


def chunk(offset: int) -> bytes:
    """A continuation chunk of NEW at `offset`."""
    return request(1, 1, {"off": offset, "data": NEW[offset : offset + 1000]}, op=2)


def test_latency_and_bandwidth_delay_replies() -> None:
    """A reply arrives after both one-way latencies plus each frame's transmission time."""
    device = make_device(link=LinkProfile(latency_s=0.01, bandwidth_bytes_per_s=1000.0))
    [(send_at_s, frame)] = device.handle(ECHO, 5.0)
    assert send_at_s == pytest.approx(5.0 + 0.01 + len(ECHO) / 1000 + len(frame) / 1000 + 0.01)


def test_each_direction_is_a_pipe() -> None:
    """Two requests sent together queue: the second reply follows the first by one reply-frame time."""
    device = make_device(link=LinkProfile(bandwidth_bytes_per_s=1000.0))
    [(first_s, frame)] = device.handle(ECHO, 0.0)
    second_s = device.handle(ECHO, 0.0)[0].send_at_s
    assert second_s - first_s == pytest.approx(len(frame) / 1000)


def test_loss_is_seeded_and_repeatable() -> None:
    """With 50% loss the same seed loses the same frames, and some but not all get through."""

    def survivors() -> list[int]:
        device = make_device(link=LinkProfile(loss_rate=0.5))
        return [index for index in range(200) if device.handle(PARAMS, float(index))]

    first = survivors()
    assert first == survivors()
    assert 20 < len(first) < 120


def test_a_request_being_processed_holds_its_reply_buffer_too() -> None:
    """Requests and replies share the pool: with buf_count 2 a slow request leaves no room to wait."""
    device = make_device(link=LinkProfile(buf_count=2), faults=FaultPlan(first_chunk_erase_delay_s=1.0))
    [(erase_done_s, _)] = device.handle(first_chunk(), 0.0)
    assert erase_done_s == pytest.approx(1.0)
    assert [len(device.handle(PARAMS, 0.1)) for _ in range(2)] == [0, 0]
    assert device.counters.no_buffer_drops == 2
    assert len(device.handle(PARAMS, 1.5)) == 1


def test_requests_beyond_the_pool_are_dropped_while_the_device_is_busy() -> None:
    """With buf_count 3 one request can wait beside the one being processed; the next is dropped."""
    device = make_device(link=LinkProfile(buf_count=3), faults=FaultPlan(first_chunk_erase_delay_s=1.0))
    device.handle(first_chunk(), 0.0)
    waiting = [device.handle(PARAMS, 0.1) for _ in range(3)]
    assert [len(replies) for replies in waiting] == [1, 0, 0]
    assert waiting[0][0].send_at_s == pytest.approx(1.0)  # answered after the erase
    assert len(device.handle(PARAMS, 1.5)) == 1


def test_a_burst_is_read_one_datagram_at_a_time_and_every_second_one_dropped() -> None:
    """The calibrated native_sim_udp profile answers a burst at positions 0, 2, 4 like the real build."""
    device = native_sim_udp_device()
    answered = [
        position
        for position in range(7)
        if device.handle(request(0, 0, {"d": "x"}, op=2, sequence=position), 0.0001 * position)
    ]
    assert answered == [0, 2, 4, 6]
    assert device.counters.no_buffer_drops == 3


def test_datagrams_over_the_udp_mtu_are_cut_and_answered_rc_9() -> None:
    """On a UDP build, 1500 bytes are read whole; 1501 are cut at the MTU, so the header runs past: rc 9."""
    device = make_device(link=LinkProfile(datagram_limit_bytes=UDP_MTU_BYTES))
    for size, expected in ((1500, "r"), (1501, "rc"), (4000, "rc")):
        frame = echo_of_size(size)
        [answer] = exchange(device, frame)
        assert list(reply(answer)[1]) == [expected]
    assert body(exchange(device, echo_of_size(1501))) == {"rc": 9}


def test_a_ble_or_serial_device_reads_whole_frames_up_to_its_buffer() -> None:
    """Without a UDP receive buffer, a 2000-byte frame fits a 2048-byte buffer and is answered."""
    assert list(body(exchange(make_device(), echo_of_size(2000)))) == ["r"]


def test_oversized_datagrams_cost_no_processing_time() -> None:
    """A burst of datagrams rejected on their header is answered whole: no buffer stays held."""
    device = native_sim_udp_device()
    assert all(device.handle(echo_of_size(1600), 0.0001 * index) for index in range(3))
    assert device.counters.no_buffer_drops == 0


def test_a_pool_smaller_than_reported() -> None:
    """`reported_buf_count` is what the parameters say; the pool stays `buf_count`."""
    device = make_device(link=LinkProfile(buf_count=2, reported_buf_count=4))
    assert body(exchange(device, PARAMS)) == {"buf_size": 2048, "buf_count": 4}


def test_drop_the_nth_response() -> None:
    """The plan's reply numbers are handled but never answered; the others are."""
    device = make_device(faults=FaultPlan(drop_responses=frozenset({2})))
    assert [len(exchange(device, PARAMS)) for _ in range(3)] == [1, 0, 1]
    assert device.counters.replies_dropped == 1


def test_delay_the_nth_response() -> None:
    """A delayed reply leaves later by the given time."""
    device = make_device(faults=FaultPlan(delay_responses_s={1: 2.5}))
    assert device.handle(PARAMS, 1.0)[0].send_at_s == pytest.approx(3.5)
    assert device.handle(PARAMS, 1.0)[0].send_at_s == pytest.approx(1.0)


def test_go_silent_mid_upload() -> None:
    """The chunk at the fault offset is dropped and nothing is answered until the silence ends."""
    device = make_device(faults=FaultPlan(silent_at_upload_offset=2000, silent_duration_s=3.0))
    assert body(exchange(device, first_chunk(), 0.0)) == {"off": 1000}
    assert body(exchange(device, chunk(1000), 0.1)) == {"off": 2000}
    assert exchange(device, chunk(2000), 0.2) == []
    assert device.phase is DevicePhase.SILENT
    assert exchange(device, PARAMS, 3.1) == []
    assert device.next_timer_s() == pytest.approx(3.2)
    assert body(exchange(device, first_chunk(), 3.2)) == {"off": 2000}  # the session survived


def test_reboot_mid_upload_loses_the_session() -> None:
    """The chunk at the fault offset reboots the device; afterwards the upload restarts from 0."""
    device = make_device(faults=FaultPlan(reboot_at_upload_offset=1000))
    exchange(device, first_chunk(), 0.0)
    assert exchange(device, chunk(1000), 0.1) == []
    assert device.phase is DevicePhase.BOOTING
    device.poll(1.0)
    assert body(exchange(device, chunk(1000), 1.0)) == {"off": 0}
    assert body(exchange(device, first_chunk(), 1.1)) == {"off": 1000}


def test_slow_erase_delays_the_first_chunk_only() -> None:
    """Each new upload's first chunk takes the erase delay; continuation chunks do not."""
    device = make_device(faults=FaultPlan(first_chunk_erase_delay_s=2.0))
    assert device.handle(first_chunk(), 0.0)[0].send_at_s == pytest.approx(2.0)
    assert device.handle(chunk(1000), 2.0)[0].send_at_s == pytest.approx(2.0)


def test_legacy_rc_and_extra_fields_in_success_replies() -> None:
    """Legacy builds prepend `rc: 0`; newer ones may append unknown fields; errors are unchanged."""
    device = make_device(faults=FaultPlan(legacy_rc=True, extra_fields={"x-new": 1}))
    frame = exchange(device, request(128, 1))[0]
    assert list(reply(frame)[1].items()) == [("rc", 0), ("project_key", "sim-project-key"), ("x-new", 1)]
    assert body(exchange(device, request(128, 9))) == {"rc": 8}


def test_assigning_a_plan_restarts_its_numbering() -> None:
    """A new fault plan counts replies from its own first one."""
    device = make_device()
    exchange(device, PARAMS)
    device.faults = FaultPlan(drop_responses=frozenset({1}))
    assert exchange(device, PARAMS) == []
    assert len(exchange(device, PARAMS)) == 1
