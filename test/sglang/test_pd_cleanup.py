"""PD landing that does not complete (issue 24 item 4), the parts that need no server: the DP
controller's book of landing requests, the testing delay marker, the prefill's held send, and a
holder's deferred release of a failed landing (the end-to-end runs are ``test/e2e/test_pd.py``).
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
from sglang.srt.disaggregation.base.conn import KVPoll

from sglang_dcp import env
from sglang_dcp.sglang import pd_cleanup, pd_landing


def test_the_controller_drops_each_landing_request_once_when_it_ends():
    book = pd_cleanup.LandingBook()
    for rid in ("a1", "a2", "b"):
        book.landed(rid)
    assert book.ended(["x", "b"]) == ["b"]  # not landing: nothing to drop
    assert book.ended(["b"]) == []
    assert sorted(book.aborted("a", abort_all=False)) == ["a1", "a2"]  # SGLang's prefix match
    book.landed("c")
    assert book.aborted("zzz", abort_all=True) == ["c"] and not book.rids


def test_the_delay_marker_carries_its_seconds_and_is_never_sent():
    dst = np.array([pd_cleanup.delay_marker(7), -1, 40, 41], np.int32)
    assert pd_cleanup.marked_delay(dst) == 7
    assert pd_cleanup.marked_delay(np.array([-1, 3], np.int32)) == 0
    assert pd_cleanup.marked_delay(np.array([pd_landing.FAIL_ME], np.int32)) == 0
    assert pd_cleanup.marked_delay(np.array([], np.int32)) == 0
    with pytest.raises(ValueError, match="1 s or more"):
        pd_cleanup.delay_marker(0)
    seen = []

    def original(self, session, src, ptrs, dst_idx, executor, *args, **kwargs):
        seen.append((src.tolist(), dst_idx.tolist()))
        return 0

    mgr = _Prefill(room=5, dst=dst, status=KVPoll.Failed)  # the room failed: nothing sent
    assert pd_landing.around_send_kvcache(original, mgr, "s", np.arange(4), [1], dst, None) == 0
    assert seen == []


def test_the_delay_and_no_room_switches_say_how_to_set_them(monkeypatch):
    monkeypatch.setenv(env.INJECT_PD_LANDING_DELAY_VAR, "1300@120")
    monkeypatch.setenv(env.INJECT_PD_LANDING_NO_ROOM_VAR, "1400")
    assert env.inject_pd_landing_delay() == (1300, 120)
    assert env.inject_pd_landing_no_room() == 1400
    monkeypatch.setenv(env.INJECT_PD_LANDING_DELAY_VAR, "1300")
    with pytest.raises(ValueError, match="PROMPT_TOKENS@SECONDS"):
        env.inject_pd_landing_delay()
    monkeypatch.setenv(env.INJECT_PD_LANDING_NO_ROOM_VAR, "many")
    with pytest.raises(ValueError, match="prompt length in tokens"):
        env.inject_pd_landing_no_room()


class _Prefill:
    """The parts of a prefill ``MooncakeKVManager`` ``hold_send`` reads."""

    def __init__(self, room, dst, status):
        self.transfer_infos = {room: {"s": SimpleNamespace(dst_kv_indices=dst)}}
        self.request_status = {room: status}


def test_a_held_send_ends_early_when_its_room_fails():
    dst = np.array([pd_cleanup.delay_marker(30), 1, 2], np.int32)
    mgr = _Prefill(room=9, dst=dst, status=KVPoll.Transferring)
    threading.Timer(0.3, lambda: mgr.request_status.update({9: KVPoll.Failed})).start()
    assert pd_cleanup.hold_send(mgr, "s", dst[:2], 30) is True  # a chunk's view of the list
    mgr = _Prefill(room=9, dst=dst, status=KVPoll.Transferring)
    threading.Timer(0.3, lambda: mgr.request_status.clear()).start()  # failed and reaped
    assert pd_cleanup.hold_send(mgr, "s", dst, 30) is True
    mgr = _Prefill(room=9, dst=dst, status=KVPoll.Transferring)
    assert pd_cleanup.hold_send(mgr, "s", dst, 1) is False  # the delay ran out: send


class _Decode:
    """A decode ``KVManager`` as a holder's release reads it (deferred release on)."""

    enable_deferred_decode_kv_release = True

    def __init__(self):
        self.failure_lock = threading.Lock()
        self.failure_records = {7: "Aborted by AbortReq."}
        self.drained = False
        self.cleared = []

    def is_abort_release_safe(self, room, acks):
        return self.drained

    def clear_deferred_abort_state(self, room):
        self.cleared.append(room)


class _Receiver:
    def __init__(self, mgr, notified):
        self.kv_mgr, self.abort_notified, self.bootstrap_infos = mgr, notified, [{}]

    def ensure_abort_notified(self, *, force_arm=False):
        self.abort_notified = True


class _Allocator:
    page_size = 1

    def __init__(self):
        self.freed = []

    def free(self, slots):
        self.freed += slots.tolist()


def _holder(timeout):
    import torch

    from sglang_dcp.sglang.entries import GuestEntry

    alloc = _Allocator()
    queue = SimpleNamespace(deferred_kv_release_timeout=timeout)
    sched = SimpleNamespace(token_to_kv_pool_allocator=alloc, disagg_decode_transfer_queue=queue)
    guests = {"r": GuestEntry.new("r", 0, 1, [(0, 3)], torch.tensor([5, 6, 7]))}
    rt = SimpleNamespace(rank=1, scheduler=sched, landing_held={}, guests=guests,
                         drop_guest=lambda rid: guests.pop(rid, None))  # RankRuntime's API
    return rt, alloc


def test_a_failed_holder_keeps_its_slots_until_the_prefill_acks_the_drain():
    rt, alloc = _holder(timeout=60.0)
    mgr = _Decode()
    rx = _Receiver(mgr, notified=True)
    assert pd_cleanup.release_failed(rt, 7, "r", rx) is False  # writes may be in flight
    assert pd_cleanup.release_failed(rt, 7, "r", rx) is False and alloc.freed == []
    mgr.drained = True
    assert pd_cleanup.release_failed(rt, 7, "r", rx) is True
    assert sorted(alloc.freed) == [5, 6, 7] and not rt.guests and not rt.landing_held
    assert mgr.cleared == [7] and 7 not in mgr.failure_records


def test_a_failed_holder_frees_its_slots_at_the_timeout_without_an_ack():
    rt, alloc = _holder(timeout=0.0)  # the prefill died: no ack will come
    assert pd_cleanup.release_failed(rt, 7, "r", _Receiver(_Decode(), notified=False)) is True
    assert sorted(alloc.freed) == [5, 6, 7]


def test_a_holder_without_room_fails_the_request_with_the_reason_and_what_to_do():
    sent = []
    alloc = SimpleNamespace(available_size=lambda: 100)
    sched = SimpleNamespace(token_to_kv_pool_allocator=alloc, ipc_channels=SimpleNamespace(
        send_to_tokenizer=SimpleNamespace(send_output=lambda out, req: sent.append(out))))
    msg = SimpleNamespace(rid="r1")
    pd_cleanup.no_room(SimpleNamespace(rank=2), sched, msg, [(512, 1024)], 512)
    (abort,) = sent
    assert abort.rid == "r1" and abort.finished_reason["status_code"] == 503
    assert abort.finished_reason["message"] == abort.abort_message == (
        "sglang-dcp: decode rank 2 could not allocate the 512 KV slots of this request's tokens "
        "[(512, 1024)] (100 free: the planner's books and SGLang's pool disagree); retry it, and "
        "if this repeats lower --dcp-kv-capacity"
    )
