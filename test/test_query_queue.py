"""The language node's bounded query FIFO: every item leaves exactly once (served, expired or cancelled)."""

from __future__ import annotations

import threading

import pytest

from chatrex_ros.core.query_queue import QueryQueue


def test_a_full_queue_refuses_and_items_leave_in_arrival_order() -> None:
    queue: QueryQueue[str] = QueryQueue(2)
    assert queue.put("a", 10.0) and queue.put("b", 10.0)
    assert not queue.put("c", 10.0) and len(queue) == 2
    assert [queue.get(0.0), queue.get(0.0), queue.get(0.0)] == ["a", "b", None]


def test_positions_follow_the_queue_and_a_removed_item_is_gone_once() -> None:
    queue: QueryQueue[list[int]] = QueryQueue(4)
    items = [[1], [1], [2]]  # equal values, distinct queries: identity decides
    for item in items:
        queue.put(item, 10.0)
    assert [queue.position(item) for item in items] == [1, 2, 3]
    assert queue.remove(items[1]) and not queue.remove(items[1])
    assert [queue.position(item) for item in items] == [1, 0, 2]
    assert queue.get(0.0) is items[0]
    assert queue.position(items[2]) == 1 and queue.position(items[0]) == 0
    assert not queue.remove(items[0]), "an item being served is no longer in the queue"


def test_expiry_and_removal_never_hand_out_an_item_twice() -> None:
    queue: QueryQueue[int] = QueryQueue(100)
    for i in range(100):
        queue.put(i, float(i))
    left: list[int] = []
    removed = [i for i in range(0, 100, 3) if queue.remove(i)]
    expired = queue.expire(50.0)
    while (item := queue.get(0.0)) is not None:
        left.append(item)
    assert sorted(removed + expired + left) == list(range(100))
    assert all(i > 50 for i in left) and not set(removed) & set(expired)


def test_get_waits_for_an_item_put_from_another_thread() -> None:
    queue: QueryQueue[str] = QueryQueue(1)
    threading.Timer(0.1, lambda: queue.put("late", 10.0)).start()
    assert queue.get(5.0) == "late"


def test_a_queue_holds_at_least_one_query() -> None:
    with pytest.raises(ValueError, match="at least one"):
        QueryQueue(0)
