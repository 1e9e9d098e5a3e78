"""The global torch RNG is held by one stage's `seeded` block at a time, so concurrent stages build the same
networks as serial ones."""

from __future__ import annotations

import threading

import torch

from diffpipe.tasks.seeding import seeded


def _weights(seed: int) -> torch.Tensor:
    with seeded(seed):
        return torch.nn.Linear(64, 64).weight.detach().clone()


def test_a_seeded_block_excludes_another_threads_until_it_ends() -> None:
    inside, release, entered = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with seeded(1):
            inside.set()
            release.wait(10)

    def second() -> None:
        with seeded(2):
            entered.set()

    a = threading.Thread(target=first)
    a.start()
    inside.wait(10)
    b = threading.Thread(target=second)
    b.start()
    assert not entered.wait(0.3)  # the second stage waits while the first draws from the generator
    release.set()
    a.join(10)
    b.join(10)
    assert entered.is_set()


def test_networks_built_in_concurrent_threads_equal_serial_ones() -> None:
    serial = {seed: _weights(seed) for seed in range(8)}
    built: dict[int, torch.Tensor] = {}
    threads = [threading.Thread(target=lambda s=seed: built.__setitem__(s, _weights(s))) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(torch.equal(built[s], serial[s]) for s in serial)
