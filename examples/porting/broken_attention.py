"""Two deliberately broken ports of ``transformer_block``, each a classic attention bug.

- ``mask_polarity_port``: the port passes torch's "True = may not attend" mask to Flax, where True
  means "attend" (the same trap as ``nn.MultiheadAttention``'s ``key_padding_mask``).
- ``interleaved_rope_port``: the port rotates interleaved pairs ``(x0, x1), (x2, x3)`` where torch
  (Hugging Face's ``rotate_half``) rotates the two halves of each head.

The weights pair and copy exactly in both; only the forward differs. ``torch_model`` and
``example_inputs`` are the transformer block's.
"""

from __future__ import annotations

from examples.porting.transformer_block import FlaxBlock, example_inputs, flax_model, torch_model

__all__ = ["example_inputs", "interleaved_rope_port", "mask_polarity_port", "torch_model"]


def mask_polarity_port(dtype: str = "float32") -> FlaxBlock:
    return flax_model(dtype, mask_polarity_bug=True)


def interleaved_rope_port(dtype: str = "float32") -> FlaxBlock:
    return flax_model(dtype, interleaved_rope=True)
