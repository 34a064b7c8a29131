"""Input-generated parameter vectors (attention vectors, fusion matrices) with an optional PAD-Net mask.

ODConv's channel/filter/spatial attentions and DCD's Λ(x) and Φ(x) are dynamic parameters produced per
sample by one linear head on a shared hidden feature h: v(x) = act(W h + b). Their PAD-Net form
(paper 001, appendix C) mixes them element-wise with static values through
[`mix`][padnet.layers.modes.PartialMode.mix]: v̂ = λd · M ⊙ v(x) + λs · (1 − M) ⊙ v̄.

The dynamic factors of element j are row j of the head (its weight row and bias): a compact model
drops the rows of static elements, so the mode is built with `num_factors = hidden + 1` and a
shared mask, which makes parameter counting and magnitude scores work unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from padnet.layers.modes import make_mode, with_masks

ACTIVATIONS = {
    "sigmoid": torch.sigmoid,
    "hardsigmoid": nn.functional.hardsigmoid,
    "hardsigmoid2": lambda z: 2.0 * nn.functional.hardsigmoid(z),  # relu6(z + 3) / 3: DCD's Λ, 1 at z = 0
    "softmax": lambda z: torch.softmax(z, dim=-1),
    "identity": lambda z: z,
}


class DynamicVector(nn.Module):
    """One head v(x) = act((W h + b) / T) of `size` elements, fully or partially dynamic.

    Args:
        hidden: width of the shared feature h.
        size: number of elements n of the vector.
        activation: a key of `ACTIVATIONS` (applied after dividing the logits by the temperature).
        partial: build a [`PartialMode`][padnet.layers.modes.PartialMode] (PAD-Net) instead of the identity mode.
        static_value: initial value of the static elements v̄ (1 for multiplicative attentions: a static
            element then leaves the convolution as it is; 0 for additive terms).
        semantics: `"static"` (PAD-Net) or `"zero"`.

    `forward(h, temperature=1.0, lam_s=1.0, lam_d=1.0)`: h (B, hidden) → (B, n) in h's dtype; the activation
    of the logits divided by the temperature runs in float32 (also inside `torch.autocast`).
    """

    def __init__(
        self,
        hidden: int,
        size: int,
        activation: str = "sigmoid",
        partial: bool = False,
        static_value: float = 1.0,
        semantics: str = "static",
    ):
        super().__init__()
        self.head = nn.Linear(hidden, size)
        self.activation = activation
        self._act = ACTIVATIONS[activation]
        self.mode = make_mode(
            partial, (size,), hidden + 1, "shared", semantics, torch.full((size,), float(static_value))
        )
        if partial:
            self.mode.macs_per_element = hidden  # a head row costs `hidden` MACs; its bias adds no product

    def forward(self, h: torch.Tensor, temperature=1.0, lam_s=1.0, lam_d=1.0) -> torch.Tensor:
        logits = self.head(h)  # (B, n)
        with torch.autocast(logits.device.type, enabled=False):
            values = self._act(logits.float() / temperature)
        return self.mode.mix(values, lam_s, lam_d).to(h.dtype)

    def factors(self) -> torch.Tensor:
        """The head's parameters as dynamic factors of the n elements: (hidden + 1, n)."""
        return torch.cat([self.head.weight.t(), self.head.bias.unsqueeze(0)])

    def mode_pair(self, name: str) -> list[tuple[str, nn.Module, torch.Tensor]]:
        """`[(name, mode, factors)]` when partially dynamic, else `[]` (see `mode_pairs` of the layers)."""
        return with_masks([(name, self.mode, self.factors())])

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"
