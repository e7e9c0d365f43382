"""The unbiased stochastic 1-bit quantizer, bit packing and payload sizes.

Quantizer (Li & Skoglund, arXiv:2403.14716; step 3 of ``sign1bit.coding``): for |c| ≤ B,

    q = +1 with probability (1 + c/B)/2, else −1,   so  E[B q] = c,  Var[B q] = B² − c².

Coordinates with |c| > B are clipped to ±B (biased); callers count them.

References:
  Li, Skoglund, `Distributed Learning based on 1-Bit Gradient Coding in the Presence of
  Stragglers <https://arxiv.org/abs/2403.14716>`_, 2024
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

SCHEMES = ("one_bit", "one_bit_scale", "fp32", "int8_psum")


def stochastic_sign(x: jax.Array, key: jax.Array, bound) -> jax.Array:
  """Bits b (True ↔ q = +1) with P(b) = (1 + clip(x/B, −1, 1))/2, one uniform per coordinate.

  ``x = +B`` gives +1 and ``x = −B`` gives −1 deterministically (uniforms lie in [0, 1)).
  """
  prob = 0.5 * (1.0 + jnp.clip(x / bound, -1.0, 1.0))
  return jax.random.uniform(key, x.shape, jnp.float32) < prob


def pack(bits: jax.Array) -> jax.Array:
  """bool[..., D] → uint8[..., ⌈D/8⌉] (big-endian within a byte, zero padded)."""
  return jnp.packbits(bits, axis=-1)


def unpack(packed: jax.Array, num_bits: int) -> jax.Array:
  """uint8[..., ⌈D/8⌉] → ±1 float32[..., D]."""
  bits = jnp.unpackbits(packed, axis=-1, count=num_bits)
  return 2.0 * bits.astype(jnp.float32) - 1.0


def payload_bytes(num_params: int, scheme: str = "one_bit", num_workers: int = 1) -> int:
  """Bytes one worker sends per step.

  ``one_bit``: ⌈D/8⌉ (constant bound, sign votes); ``one_bit_scale``: ⌈D/8⌉ + 4 (plus one f32
  scale: ``bound="linf"``, EF-signSGD); ``fp32``: 4D (real-valued SGC, ignore-stragglers);
  ``int8_psum``: D (the ``wire="int8_psum"`` alternative: an s8[D] all-reduce, 8× the packed
  payload; s32[D], 4D bytes, when ``num_workers`` > 127 because the vote sum must fit).
  """
  d = int(num_params)
  if d < 1:
    raise ValueError(f"num_params must be >= 1, got {num_params}")
  sizes = {"one_bit": math.ceil(d / 8), "one_bit_scale": math.ceil(d / 8) + 4, "fp32": 4 * d,
           "int8_psum": d if num_workers <= 127 else 4 * d}
  if scheme not in sizes:
    raise ValueError(f"scheme {scheme!r} unknown; allowed: {', '.join(SCHEMES)}")
  return sizes[scheme]


def payload_bits(num_params: int, scheme: str = "one_bit") -> int:
  """Uplink bits one non-straggler sends per step in the paper's accounting (no byte padding):
  D, D + 32, 32 D, or 8 D."""
  d = int(num_params)
  payload_bytes(d, scheme)  # validates
  return {"one_bit": d, "one_bit_scale": d + 32, "fp32": 32 * d, "int8_psum": 8 * d}[scheme]
