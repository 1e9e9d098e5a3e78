"""A small bidirectional transformer predicting clean tokens from partially masked sequences (MDLM/LLaDA)."""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from diffpipe.tasks.registry import implements


@implements("arch", "mdlm")
class MaskedDiffusionTransformer(ModelMixin, ConfigMixin):
    """Bidirectional transformer over token ids; no time input (LLaDA style); never predicts the mask."""

    @register_to_config
    def __init__(self, vocab_size: int, max_length: int, mask_token_id: int, d_model: int = 128,
                 num_layers: int = 4, num_heads: int = 4, mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Parameter(torch.zeros(1, max_length, d_model))
        layer = nn.TransformerEncoderLayer(d_model, num_heads, mlp_ratio * d_model, dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        nn.init.normal_(self.position_embedding, std=0.02)

    def forward(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Logits (batch, length, vocab) of the clean token at every position; the mask logit is -inf."""
        length = input_ids.shape[1]
        hidden = self.token_embedding(input_ids) + self.position_embedding[:, :length]
        logits = self.head(self.norm(self.encoder(hidden)))
        return logits.index_fill(-1, torch.tensor([self.config.mask_token_id], device=logits.device),
                                 float("-inf"))
