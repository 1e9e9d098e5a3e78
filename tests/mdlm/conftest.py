"""Shared tiny models for the masked-diffusion tests."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from mdlm_helpers import tiny_model

from diffpipe.tasks.nets.mdlm import MaskedDiffusionTransformer

torch.set_num_threads(1)


@pytest.fixture
def model() -> MaskedDiffusionTransformer:
    return tiny_model()
