"""A thread's torch count is its own once set, whatever other threads set after it."""

from __future__ import annotations

import threading

import torch

from retrieval.torch_threads import use_torch_threads


def test_a_threads_count_holds_when_another_thread_sets_one_later():
    before = torch.get_num_threads()
    counts: dict[str, int] = {}
    set_first, set_second = threading.Event(), threading.Event()

    def first() -> None:
        use_torch_threads(2)
        set_first.set()
        set_second.wait(10)
        torch.mm(torch.ones(64, 64), torch.ones(64, 64))  # its first operation, after the other's
        counts["first"] = torch.get_num_threads()

    def second() -> None:
        use_torch_threads(1)
        counts["second"] = torch.get_num_threads()

    def later() -> None:  # started after both, set nothing: takes the latest count
        counts["later"] = torch.get_num_threads()

    try:
        one = threading.Thread(target=first)
        one.start()
        assert set_first.wait(10)
        for target in (second, later):
            thread = threading.Thread(target=target)
            thread.start()
            thread.join()
        set_second.set()
        one.join()
    finally:
        torch.set_num_threads(before)
    assert counts == {"first": 2, "second": 1, "later": 1}
