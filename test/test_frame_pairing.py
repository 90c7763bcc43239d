"""The ROS-free pairing cache and time-jump detection: bounded memory, slow proposers, bad stamps."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatrex_ros.core.frame_cache import CLAIMED_CAPACITY, FrameCache, FrameTooLarge
from chatrex_ros.core.time_jumps import StampEvent, StampTimeline

MS = 1_000_000


def events(stamps: list[int]) -> list[StampEvent]:
    timeline = StampTimeline()
    return [timeline.observe(s).event for s in stamps]


def test_in_order_stamps_are_in_order() -> None:
    assert set(events([1, 2, 2, 3, 10])) == {StampEvent.IN_ORDER}


def test_a_bag_replayed_again_is_a_jump_after_two_frames() -> None:
    timeline = StampTimeline()
    for stamp in (100, 101, 102):
        timeline.observe(stamp)
    assert timeline.observe(1).event is StampEvent.SUSPECT
    verdict = timeline.observe(2)
    assert verdict.event is StampEvent.JUMP and verdict.keep_from == 1 and verdict.jump_ns == 101
    assert timeline.observe(3).event is StampEvent.IN_ORDER


def test_a_future_outlier_is_dropped_not_a_jump() -> None:
    timeline = StampTimeline()
    for stamp in (10, 11, 1000):
        timeline.observe(stamp)
    assert timeline.observe(12).event is StampEvent.SUSPECT
    verdict = timeline.observe(13)
    assert verdict.event is StampEvent.OUTLIER and verdict.dropped == 1000
    assert timeline.observe(14).event is StampEvent.IN_ORDER


def test_a_past_outlier_is_dropped_not_a_jump() -> None:
    timeline = StampTimeline()
    for stamp in (10, 11):
        timeline.observe(stamp)
    assert timeline.observe(0).event is StampEvent.SUSPECT
    verdict = timeline.observe(12)
    assert verdict.event is StampEvent.OUTLIER and verdict.dropped == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=3, max_size=30), st.integers(0, 27), st.integers(10**8, 10**11))
def test_one_outlier_in_an_increasing_stream_costs_only_that_frame(steps, where, offset) -> None:
    stamps = [int(s) for s in np.cumsum([s + 1 for s in steps]) + 10**12]
    where = min(where, len(stamps) - 3)  # two good frames after it let the cache decide
    good = stamps[:where] + stamps[where + 1 :]
    stamps[where] = stamps[where] + offset if offset % 2 else stamps[where] - offset
    cache: FrameCache[int, str] = FrameCache(answerable=8, recent=64)
    for stamp in stamps:
        cache.add_image(stamp, stamp)
    assert all(cache.knows(stamp) for stamp in good)
    if where > 0 or offset % 2:  # an early first frame is simply in order
        assert not cache.knows(stamps[where])


def frames(cache: FrameCache, stamps) -> None:
    for stamp in stamps:
        cache.add_image(stamp, f"image{stamp}")


def test_a_claimed_frame_outlives_many_newer_frames() -> None:
    cache: FrameCache[str, str] = FrameCache(answerable=8, recent=4)
    frames(cache, [0])
    cache.claim(0)
    frames(cache, range(33 * MS, 3000 * MS, 33 * MS))  # 3 s of a 30 Hz camera while the proposer works
    assert cache.wait_for(None, 0) is None
    cache.add_proposals(0, "proposals0")
    frame = cache.wait_for(None, 0)
    assert frame is not None and (frame.stamp_ns, frame.image, frame.proposals) == (0, "image0", "proposals0")
    assert sum(cache.sizes().values()) <= 8 + 4 + CLAIMED_CAPACITY


def test_a_claim_may_overtake_its_image_and_proposals_may_overtake_it_too() -> None:
    cache: FrameCache[str, str] = FrameCache()
    cache.claim(5)
    cache.add_image(5, "image5")
    cache.add_proposals(5, "p5")
    assert cache.wait_for(5, 0).image == "image5"
    cache.add_proposals(7, "p7")  # a fast proposer beat the large image
    assert cache.wait_for(7, 0) is None
    cache.add_image(7, "image7")
    assert cache.wait_for(7, 0).proposals == "p7"


def test_proposals_for_an_image_that_never_came_are_counted() -> None:
    cache: FrameCache[str, str] = FrameCache()
    frames(cache, [1, 2, 4])
    cache.add_proposals(0, "p0")  # before this node's first image: it was still starting, not a loss
    assert cache.stats.proposals_without_image == 0
    cache.add_proposals(3, "p3")  # between images that did arrive: its image was lost
    assert cache.stats.proposals_without_image == 1
    cache.add_proposals(5, "p5")  # may still arrive
    cache.add_image(6, "image6")  # ...it did not
    assert cache.stats.proposals_without_image == 2


def test_unclaimed_images_are_bounded_and_evicted_oldest_first() -> None:
    cache: FrameCache[str, str] = FrameCache(answerable=2, recent=3)
    frames(cache, range(100))
    assert cache.sizes()["recent"] == 3
    cache.add_proposals(97, "late")
    assert cache.wait_for(97, 0) is not None
    cache.add_proposals(50, "evicted")
    assert cache.wait_for(50, 0) is None


def test_newest_is_the_last_completed_frame_not_the_highest_stamp() -> None:
    cache: FrameCache[str, str] = FrameCache()
    frames(cache, [10, 11])
    cache.add_image(10**18, "glitch")  # a camera clock glitch, stamped far in the future
    cache.add_proposals(10**18, "pg")
    frames(cache, [12, 13])  # the outlier is recognised and dropped
    assert cache.wait_for(10**18, 0) is None
    cache.add_proposals(13, "p13")
    assert cache.wait_for(None, 0).stamp_ns == 13
    assert cache.stats.outliers == 1


def test_a_replayed_bag_clears_the_previous_run() -> None:
    cache: FrameCache[str, str] = FrameCache()
    for stamp in (100, 101, 102):
        cache.add_image(stamp, f"run1-{stamp}")
        cache.add_proposals(stamp, "p")
    cache.add_image(100, "run2-100")
    assert cache.wait_for(None, 0).image == "run1-102"  # one frame back is not yet a jump
    cache.add_image(101, "run2-101")
    assert cache.stats.time_jumps == 1
    assert cache.wait_for(None, 0) is None  # nothing of the first run answers any more
    assert cache.wait_for(102, 0) is None
    cache.add_proposals(101, "p")
    assert cache.wait_for(None, 0).image == "run2-101"
    assert [e.event for e in cache.take_events()] == [StampEvent.JUMP]


def test_skipped_frames_are_known_once_the_proposer_announces_frames() -> None:
    cache: FrameCache[str, str] = FrameCache()
    frames(cache, [1, 2, 3])
    assert not cache.skipped(2)  # no claims seen: a proposer that does not announce may still come
    cache.claim(3)
    assert cache.skipped(2) and not cache.skipped(3)


def test_abandoned_claims_are_bounded() -> None:
    cache: FrameCache[str, str] = FrameCache()
    for stamp in range(10):
        cache.add_image(stamp, "i")
        cache.claim(stamp)
    assert cache.sizes()["claimed"] == CLAIMED_CAPACITY
    assert cache.stats.claims_abandoned == 10 - CLAIMED_CAPACITY


def test_wait_for_wakes_up_when_the_proposals_arrive() -> None:
    cache: FrameCache[str, str] = FrameCache()
    cache.add_image(1, "i")
    cache.claim(1)
    timer = threading.Timer(0.1, cache.add_proposals, args=(1, "p"))
    timer.start()
    assert cache.wait_for(None, 5.0).proposals == "p"
    timer.join()


def test_a_refused_list_ends_the_wait_for_its_frame_and_keeps_the_image_for_a_valid_one() -> None:
    cache: FrameCache[str, str] = FrameCache()
    cache.add_image(1, "i")
    cache.claim(1)
    timer = threading.Timer(0.1, cache.refuse, args=(1, "box 0 is inverted"))
    timer.start()
    assert cache.wait_for(1, 5.0) is None  # woken by the refusal, not by the 5 s timeout
    timer.join()
    assert cache.refusal(1) == (1, "box 0 is inverted") and cache.refusal() == (1, "box 0 is inverted")
    assert cache.last_list_refused and cache.stats.proposals_refused == 1
    assert cache.sizes()["claimed"] == 0 and cache.sizes()["recent"] == 1
    cache.add_proposals(1, "p")  # a second proposer's valid list still pairs with the kept image
    frame = cache.wait_for(1, 0.0)
    assert frame is not None and frame.image == "i"
    assert cache.refusal(1) is None and not cache.last_list_refused


def test_refusals_are_bounded_and_forgotten_on_a_time_jump() -> None:
    cache: FrameCache[str, str] = FrameCache()
    for stamp in range(1, 21):
        cache.add_image(stamp * 33 * MS, "i")
        cache.refuse(stamp * 33 * MS, f"reason {stamp}")
    assert cache.sizes()["refused"] < 20 and cache.refusal() == (20 * 33 * MS, "reason 20")
    assert cache.refusal(33 * MS) is None  # the oldest reason made room
    for stamp in (1, 2, 3):  # the bag starts again: a jump back clears everything
        cache.add_image(stamp * MS, "replayed")
    assert cache.refusal() is None


@pytest.mark.parametrize("rate_hz, latency_s", [(10, 0.1), (10, 1.0), (10, 3.0), (30, 0.1), (30, 1.0), (30, 3.0)])
def test_every_frame_a_slow_proposer_works_on_is_paired(rate_hz, latency_s) -> None:
    """A simulated camera and a newest-frame-wins proposer: every proposal list finds its image."""
    cache: FrameCache[str, str] = FrameCache()
    period = 1.0 / rate_hz
    busy_until, working_on, published = 0.0, None, 0
    for k in range(int(20 / period)):
        now, stamp = k * period, k * 10**7
        if working_on is not None and now >= busy_until:
            cache.add_proposals(working_on, f"p{working_on}")
            published += 1
            working_on = None
        cache.add_image(stamp, f"i{stamp}")
        if working_on is None:
            working_on, busy_until = stamp, now + latency_s
            cache.claim(stamp)
    assert published > 0 and cache.stats.paired == published
    assert cache.stats.proposals_without_image == 0
    assert sum(cache.sizes().values()) <= 8 + 4 + CLAIMED_CAPACITY


def test_an_answered_frame_is_kept_for_follow_ups_and_eviction_is_told_apart() -> None:
    cache: FrameCache[str, str] = FrameCache(answerable=2, recent=2)
    cache.add_image(1, "i1")
    cache.claim(1)
    cache.add_proposals(1, "p1")
    cache.keep(1)  # a query was answered about frame 1
    cache.add_image(2, "i2")
    cache.add_proposals(2, "p2")
    for stamp in range(3, 10):
        cache.add_image(stamp, "i")
        cache.claim(stamp)
        cache.add_proposals(stamp, "p")
    assert cache.wait_for(1, 0).image == "i1"  # kept
    assert cache.wait_for(2, 0) is None and cache.was_evicted(2) and not cache.skipped(2)
    assert not cache.was_evicted(1)
    assert cache.wait_for(None, 0).stamp_ns == 9  # a kept frame is never "newest"


def test_a_pinned_depth_frame_that_never_arrives_is_told_apart() -> None:
    from chatrex_ros.core.grasp_pairing import DepthStore

    store: DepthStore[str] = DepthStore(recent=3, pinned=2)
    store.add(1, "d1")
    store.pin(2)  # claimed before its depth frame arrived...
    store.add(3, "d3")  # ...and the next frame came instead
    assert store.never_arrived(2) and store.find(2) is None
    store.pin(4)
    store.add(4, "d4")
    store.add(5, "d5")
    assert not store.never_arrived(4) and store.find(4) == (4, "d4")


def test_a_claim_for_a_depth_frame_that_was_already_lost_is_told_apart() -> None:
    from chatrex_ros.core.grasp_pairing import DepthStore

    store: DepthStore[str] = DepthStore(recent=3, pinned=2)
    store.add(1, "d1")
    store.add(3, "d3")  # frame 2 was lost by the reader
    store.pin(2)
    assert store.never_arrived(2) and not store.claimed_too_late(2)


def test_a_claim_that_comes_after_its_frame_left_the_ring_is_not_called_lost() -> None:
    from chatrex_ros.core.grasp_pairing import DepthStore

    store: DepthStore[str] = DepthStore(recent=2, pinned=2)
    for stamp in (1, 2, 3, 4):
        store.add(stamp, f"d{stamp}")
    store.pin(2)  # frame 2 arrived and was pushed out of the 2-frame ring before this claim
    assert store.claimed_too_late(2) and not store.never_arrived(2) and store.find(2) is None
    store.pin(4)
    assert not store.claimed_too_late(4) and store.find(4) == (4, "d4")


def test_a_claim_with_a_tolerance_pins_only_the_nearest_frame() -> None:
    from chatrex_ros.core.grasp_pairing import DepthStore

    store: DepthStore[str] = DepthStore(recent=2, pinned=2)
    store.pin(20, tolerance_ns=15)  # claimed before any frame: 10, 20 (lost), 30 may each be the nearest
    store.add(10, "d10")
    store.add(25, "d25")  # nearer than 10: it replaces 10 as the claim's frame
    store.add(30, "d30")
    for stamp in (40, 50, 60):
        store.add(stamp, f"d{stamp}")
    assert store.pinned_count == 1 and store.find(20, 15) == (25, "d25"), "one frame per claim, the nearest"
    store.add(35, "late")  # out of order: dropped or kept, it changes nothing pinned
    store.pin(50, tolerance_ns=15)  # present: 50 itself, not 40 or 60 as well
    assert store.pinned_count == 2


def test_a_pinned_frame_pushed_out_by_newer_claims_is_told_apart() -> None:
    from chatrex_ros.core.grasp_pairing import DepthStore

    store: DepthStore[str] = DepthStore(recent=1, pinned=1)
    for stamp in (1, 2):
        store.add(stamp, f"d{stamp}")
        store.pin(stamp)
    store.add(3, "d3")
    assert store.find(1) is None and store.unpinned_for_newer(1) and not store.never_arrived(1)
    assert store.find(2) == (2, "d2") and not store.unpinned_for_newer(2)


# --- byte budgets ----------------------------------------------------------------------------------
def _budget_cache(max_bytes: int) -> FrameCache[bytes, str]:
    return FrameCache(answerable=8, recent=4, max_bytes=max_bytes, size_of=len)


def test_an_image_larger_than_the_whole_budget_is_refused_and_nothing_is_evicted_for_it() -> None:
    cache = _budget_cache(100)
    cache.add_image(1 * MS, b"x" * 60)
    with pytest.raises(FrameTooLarge, match="exceeds the frame cache's whole budget"):
        cache.add_image(2 * MS, b"x" * 101)
    assert cache.held_bytes() == 60 and cache.stats.too_large == 1 and cache.knows(1 * MS)


def test_the_budget_drops_recent_images_before_answerable_ones_and_keeps_the_newest_answer() -> None:
    cache = _budget_cache(100)
    for stamp in (1, 2):  # two answerable frames of 30 bytes
        cache.add_image(stamp * MS, b"a" * 30)
        cache.add_proposals(stamp * MS, "p")
    cache.add_image(3 * MS, b"r" * 30)  # a recent, unclaimed image: 90 bytes held, within the budget
    assert cache.held_bytes() == 90 and cache.stats.evicted_for_bytes == 0
    cache.add_image(4 * MS, b"r" * 30)  # 120 > 100: the older recent image goes first
    assert not cache.knows(3 * MS) and cache.held_bytes() == 90
    cache.add_image(5 * MS, b"r" * 60)  # then the recent 4, then the older answerable frame 1
    assert cache.held_bytes() <= 100
    assert cache.wait_for(2 * MS, 0.0) is not None, "the newest answerable frame is the last to go"
    assert cache.was_evicted(1 * MS)
    assert cache.stats.evicted_for_bytes == 3


def test_late_proposals_of_an_image_dropped_for_bytes_are_not_counted_as_a_lost_image() -> None:
    cache = _budget_cache(100)
    cache.add_image(1 * MS, b"a" * 60)
    cache.claim(1 * MS)
    cache.add_image(2 * MS, b"b" * 60)  # the claimed image goes: the newest one stays
    cache.add_proposals(1 * MS, "p")
    assert cache.stats.proposals_without_image == 0 and cache.was_evicted(1 * MS)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 100), st.sampled_from(["image", "claim", "proposals", "keep"])), max_size=60))
def test_the_held_images_never_exceed_the_budget(steps) -> None:
    cache = _budget_cache(200)
    stamp = 0
    for size, action in steps:
        if action == "image":
            stamp += 33 * MS
            cache.add_image(stamp, b"x" * size)
        elif action == "claim":
            cache.claim(stamp)
        elif action == "proposals":
            cache.add_proposals(stamp, "p")
        else:
            cache.keep(stamp)
        assert cache.held_bytes() <= 200


def test_the_depth_store_keeps_within_its_budget_oldest_unpinned_first() -> None:
    from chatrex_ros.core.grasp_pairing import DepthStore

    store: DepthStore[bytes] = DepthStore(recent=10, pinned=2, max_bytes=100, size_of=len)
    store.add(1 * MS, b"a" * 30)
    store.pin(1 * MS)
    for stamp in (2, 3, 4):
        store.add(stamp * MS, b"b" * 30)
    assert store.held_bytes() <= 100
    assert store.find(1 * MS) is not None, "a pinned frame outlives unpinned older ones"
    assert store.find(2 * MS) is None and store.evicted_for_bytes == 1
    with pytest.raises(FrameTooLarge, match="depth buffer's whole budget"):
        store.add(5 * MS, b"c" * 101)
    assert store.find(4 * MS) is not None
