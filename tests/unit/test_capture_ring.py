"""The shared-memory ring's slot states (inspectd.capture.ring), without processes: a header
on a plain buffer and a threading lock, driven through the transitions child and parent make."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from inspectd.capture.ring import Header, SlotState, header_size, ring_name, slot_size

SLOTS = 3


@pytest.fixture
def header() -> Header:
    h = Header(bytearray(header_size(SLOTS)), SLOTS, threading.Lock())
    h.reset(now=12.5)
    h.switch_ring(0)
    return h


def states(h: Header) -> list[SlotState]:
    return [SlotState(int(s)) for s in h.states]


def test_a_fresh_header_has_every_slot_free_nothing_dropped_and_the_heartbeat(header):
    assert states(header) == [SlotState.FREE] * SLOTS
    assert header.dropped == 0 and header.ring_number == 0 and header.heartbeat == 12.5
    header.beat(13.0)
    assert header.heartbeat == 13.0


def test_a_slot_goes_free_writing_ready_reading_free(header):
    slot = header.claim(live=False)
    assert slot == 0 and states(header)[0] is SlotState.WRITING
    header.fill(slot, seq=7)
    assert states(header)[0] is SlotState.READY and header.has_unread()
    assert header.begin_read(ring=0, slot=0, seq=7, lock_timeout=0.1)
    assert states(header)[0] is SlotState.READING and header.has_unread()
    header.end_read(ring=0, slot=0, lock_timeout=0.1)
    assert states(header) == [SlotState.FREE] * SLOTS and not header.has_unread()


def test_a_replay_gets_no_slot_while_every_one_is_unread(header):
    for seq in range(1, SLOTS + 1):
        header.fill(header.claim(live=False), seq)
    assert header.claim(live=False) is None  # the child waits for the parent
    assert header.dropped == 0


def test_a_live_camera_overwrites_the_oldest_unread_frame_and_counts_it(header):
    for seq in (5, 3, 4):  # slot 1 holds the oldest frame
        header.fill(header.claim(live=True), seq)
    assert header.claim(live=True) == 1
    assert states(header) == [SlotState.READY, SlotState.WRITING, SlotState.READY]
    assert header.dropped == 1


def test_a_live_camera_never_takes_a_slot_being_read(header):
    for seq in (1, 2, 3):
        header.fill(header.claim(live=True), seq)
    for slot, seq in enumerate((1, 2, 3)):
        assert header.begin_read(0, slot, seq, 0.1)
    assert header.claim(live=True) is None and header.dropped == 0


def test_an_overwritten_slot_is_not_read(header):
    header.fill(header.claim(live=False), seq=1)
    assert not header.begin_read(ring=0, slot=0, seq=2, lock_timeout=0.1)  # another frame now
    assert states(header)[0] is SlotState.READY


def test_a_new_ring_frees_every_slot_and_counts_unread_frames_as_dropped(header):
    header.fill(header.claim(live=True), seq=1)
    header.fill(header.claim(live=True), seq=2)
    assert header.begin_read(0, 0, 1, 0.1)
    header.switch_ring(1)
    assert header.ring_number == 1 and header.dropped == 1  # slot 1 was never read
    assert states(header) == [SlotState.FREE] * SLOTS
    # the slot copied out of the old ring stays free: the new ring's slots are not the old one's
    header.end_read(ring=0, slot=0, lock_timeout=0.1)
    assert not header.begin_read(ring=0, slot=1, seq=2, lock_timeout=0.1)
    assert states(header) == [SlotState.FREE] * SLOTS


def test_a_held_lock_makes_the_parent_give_up_instead_of_hanging(header):
    header.fill(header.claim(live=False), seq=1)
    header.lock.acquire()  # a stopped child holding the lock
    try:
        assert not header.begin_read(0, 0, 1, lock_timeout=0.05)
    finally:
        header.lock.release()
    assert header.begin_read(0, 0, 1, lock_timeout=0.05)


def test_a_released_header_refuses_use():
    h = Header(bytearray(header_size(2)), 2, threading.Lock())
    h.release()
    assert h.closed
    assert not h.begin_read(0, 0, 1, 0.1)
    with pytest.raises(ValueError, match="closed"):
        h.claim(live=True)


def test_slots_are_page_aligned_with_room_to_grow_and_rings_are_numbered():
    assert slot_size(48 * 64 * 3) == 12288  # 9216 bytes + a quarter, rounded up to 4 KiB
    assert slot_size(1) == 4096 and slot_size(4096) % 4096 == 0 and slot_size(4096) > 4096
    assert ring_name("psm_abc", 2) == "psm_abc_r2"
    assert header_size(4) == np.dtype(np.float64).itemsize + 8 * (2 + 2 * 4)
