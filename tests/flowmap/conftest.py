"""Shared fixtures of the flow-map tests: one CPU thread (the machine's 2 cores are shared), the ring."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from diffpipe.tasks.flowmap.ring import AnalyticRing  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors run fastest on one thread when the cores are busy; restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def ring() -> AnalyticRing:
    """The default ring: 8 modes, radius 2, std 0.1."""
    return AnalyticRing()
