"""Byte-level English text for the causal language model, available offline.

The corpus is CPython's own documentation text, ``pydoc_data.topics.topics`` (the topic pages
``help()`` shows; shipped with the interpreter, so nothing is downloaded), joined in sorted topic
order with blank lines between topics and UTF-8 encoded. Tokens are bytes (vocabulary 256).

Split by position, never shuffled: the first ``1 - test_fraction`` of the bytes train, the rest
validate, so no validation text is seen in training. Each split is cut into non-overlapping
windows of ``seq_len + 1`` bytes taken with stride ``seq_len``: window i holds the inputs
``w[:-1]`` and the next-byte targets ``w[1:]``, so every byte of a split after its first is a
target exactly once (the tail shorter than a window is dropped).
"""
from __future__ import annotations

import hashlib
import math

import numpy as np

VOCAB = 256
SOURCE = "pydoc_data.topics (CPython's help() topic pages)"


def corpus_bytes() -> bytes:
  """The whole corpus as UTF-8 bytes (deterministic for a given Python version)."""
  import pydoc_data.topics
  topics = pydoc_data.topics.topics
  return "\n\n".join(topics[name] for name in sorted(topics)).encode("utf-8")


def corpus_digest() -> str:
  """Short SHA-256 of the corpus: names the exact text a measurement used."""
  return hashlib.sha256(corpus_bytes()).hexdigest()[:12]


def split_by_position(tokens: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """(train, validation): the first ``1 - test_fraction`` of ``tokens`` and the rest."""
  cut = len(tokens) - int(round(test_fraction * len(tokens)))
  return tokens[:cut], tokens[cut:]


def windows(tokens: np.ndarray, seq_len: int) -> np.ndarray:
  """``[n, seq_len + 1]`` non-overlapping windows with stride ``seq_len`` (see module docstring)."""
  n = (len(tokens) - 1) // seq_len
  if n < 1:
    raise ValueError(f"{len(tokens)} tokens cannot fill one window of seq_len={seq_len} + 1")
  index = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
  return tokens[index]


def load(seq_len: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """(train windows, validation windows) as int32 arrays of shape ``[n, seq_len + 1]``."""
  tokens = np.frombuffer(corpus_bytes(), np.uint8).astype(np.int32)
  train, valid = split_by_position(tokens, test_fraction)
  return windows(train, seq_len), windows(valid, seq_len)


def bits_per_byte(loss_nats: float) -> float:
  """Mean next-byte cross-entropy in bits: ``loss / ln 2``."""
  return loss_nats / math.log(2.0)
