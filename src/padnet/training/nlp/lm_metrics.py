"""Held-out scores of a causal language model: perplexity and next-token accuracy."""

from __future__ import annotations

import math
import sys

import torch


class NextTokenScores:
    """Running scores over blocks of token ids (b, T), each predicting tokens 1…T−1 from those before: the mean
    negative log-likelihood (perplexity = its exp) and the fraction of tokens that are the most likely one
    (next-token accuracy), both weighted by tokens."""

    def __init__(self):
        self.total, self.correct, self.count = 0.0, 0, 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, ids: torch.Tensor) -> None:
        """One batch: its mean loss (0-d), logits (b, T, V) and token ids (b, T)."""
        tokens = ids[:, 1:].numel()
        self.total += float(loss) * tokens
        self.correct += int((logits[:, :-1].argmax(-1) == ids[:, 1:]).sum())
        self.count += tokens

    @property
    def perplexity(self) -> float:
        """exp of the mean negative log-likelihood; infinite when it overflows, NaN stays NaN."""
        mean = self.total / self.count
        return math.exp(mean) if mean < math.log(sys.float_info.max) else math.inf

    @property
    def accuracy(self) -> float:
        """The fraction of next tokens predicted exactly (argmax)."""
        return self.correct / self.count

    def to_dict(self) -> dict:
        return {"perplexity": self.perplexity, "accuracy": self.accuracy}
