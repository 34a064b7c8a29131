"""PAD compression of pretrained Mixture-of-Experts models: a drop-in for their banks of experts.

transformers stores the experts of Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE as two 3-D tensors,
`gate_up_proj` (E, 2F, H) and `down_proj` (E, H, F), and calls the bank as
`experts(hidden (N, H), top_k_index (N, k), top_k_weights (N, k))` after its own router; expert e computes
`W2ᵉ (act(Wgᵉ x) ⊙ Wuᵉ x)`. [`ExpertBank`][padnet.layers.experts.ExpertBank] takes the bank's place with the same call, so the model's
router, shared experts and everything else stay as they are, and holds the experts as a routerless
[`MoEFeedForward`][padnet.layers.moe.MoEFeedForward] (gated, zero biases): fully dynamic (MoE), PAD-MoE or MoE-P.

PAD-Net's mode partition then compresses the bank (PAD-Net eq. 3–4 applied to the experts): every expert becomes
one static part Θ̄ shared by all experts where the mask M = 0, plus its own values where M = 1, with
λs + λd = 2. With every mask element dynamic (κ = 1) and λs = λd = 1 the bank computes what the original did;
with none (κ = 0) every expert is λs · Θ̄. Θ̄ starts as a weighted mean of the experts ([`static_estimate`][padnet.layers.experts.static_estimate]):
uniform, or weighted by the router's load on calibration text.
"""

from __future__ import annotations

import torch
from torch import nn

from padnet.errors import ConfigError
from padnet.layers.moe import DeployedMoE, MoEFeedForward, Routing, split_neurons


def is_expert_bank(module: nn.Module) -> bool:
    """Whether `module` is a transformers bank of gated experts: 3-D `gate_up_proj` (E, 2F, H) and
    `down_proj` (E, H, F) parameters and an `act_fn`."""
    gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return (
        isinstance(gate_up, torch.Tensor)
        and isinstance(down, torch.Tensor)
        and gate_up.dim() == down.dim() == 3
        and callable(getattr(module, "act_fn", None))
        and gate_up.shape[0] == down.shape[0]
        and gate_up.shape[1] == 2 * down.shape[2]
        and gate_up.shape[2] == down.shape[1]
    )


def find_expert_banks(model: nn.Module) -> list[str]:
    """Qualified names of every bank of gated experts in `model` ([`is_expert_bank`][padnet.layers.experts.is_expert_bank]), in module order."""
    return [name for name, module in model.named_modules() if name and is_expert_bank(module)]


def static_estimate(experts: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Θ̄ = Σₑ wₑ Θᵉ / Σₑ wₑ over the experts `(E, *shape)` → `(*shape)`; uniform `weights` (the mean) when None.

    `weights` is one value per expert (E,) — e.g. the router's load — or one per element (E, *shape) — e.g. each
    expert's Fisher information (Matena & Raffel 2022, "Merging Models with Fisher-Weighted Averaging"); an
    element whose weights are all zero takes the mean.

    Raises:
        ConfigError: weights that are not non-negative values of either shape with a positive sum.
    """
    if weights is None:
        return experts.mean(0)
    weights = weights.to(device=experts.device, dtype=torch.float64)
    if weights.shape not in (experts.shape[:1], experts.shape) or bool((weights < 0).any()):
        raise ConfigError(
            f"static weights must be non-negative, of shape {tuple(experts.shape[:1])} or "
            f"{tuple(experts.shape)}, got {tuple(weights.shape)}"
        )
    if weights.dim() == 1:
        if not float(weights.sum()) > 0:
            raise ConfigError(f"static weights must have a positive sum, got {weights.tolist()}")
        # in double precision: token counts in the thousands keep their digits whatever the experts' dtype
        return torch.tensordot(weights / weights.sum(), experts.double(), dims=1).to(experts.dtype)
    total = weights.sum(0)
    weighted = (weights * experts.double()).sum(0) / total.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(total > 0, weighted, experts.double().mean(0)).to(experts.dtype)


class ExpertBank(nn.Module):
    """A transformers bank of gated experts as padnet experts, called as the bank was.

    Build it with [`from_bank`][padnet.layers.experts.ExpertBank.from_bank]. `moe` is a routerless [`MoEFeedForward`][padnet.layers.moe.MoEFeedForward] (or, once
    deployed, a [`DeployedMoE`][padnet.layers.moe.DeployedMoE]). ``forward(hidden_states (N, H), top_k_index (N, k),
    top_k_weights (N, k))`` → (N, H): Σ over each token's k experts of weight · expert(token), in
    `hidden_states`' dtype. The weights need not sum to one (Qwen2-MoE and OLMoE do not renormalise them).
    """

    folds_batchnorm = False  # the Deployable protocol

    def __init__(self, moe: MoEFeedForward | DeployedMoE):
        super().__init__()
        self.moe = moe

    @classmethod
    @torch.no_grad()
    def from_bank(
        cls,
        bank: nn.Module,
        mode: str = "pad",
        granularity: str = "element",
        static_weights: torch.Tensor | None = None,
        **options,
    ) -> ExpertBank:
        """Copy `bank`'s experts (`gate_up_proj` (E, 2F, H), `down_proj` (E, H, F), `act_fn`) into a
        gated [`MoEFeedForward`][padnet.layers.moe.MoEFeedForward] with zero biases; with `mode="pad"` Θ̄ starts as
        [`static_estimate`][padnet.layers.experts.static_estimate] of the experts with `static_weights` (E,) (None: the mean).

        Args:
            bank: the transformers bank of gated experts.
            mode: `"dynamic"`, `"pad"` or `"prune"`.
            granularity: `"element"` or `"neuron"`.
            static_weights: (E,) weights of the static estimate, or None (the mean).
            **options: `scale_mode`.

        Raises:
            ConfigError: a module that is not such a bank.
        """
        if not is_expert_bank(bank):
            raise ConfigError(
                f"{type(bank).__name__} is not a bank of gated experts (gate_up_proj, down_proj)"
            )
        gate_up, down = bank.gate_up_proj.detach(), bank.down_proj.detach()
        num_experts, hidden, inter = down.shape
        moe = MoEFeedForward(
            hidden,
            inter,
            num_experts,
            activation=bank.act_fn,
            mode=mode,
            granularity=granularity,
            gated=True,
            router=False,
            **options,
        ).to(down.device, down.dtype)
        # (E, 3H + 2, F): [Wgᵀ; bg; Wuᵀ; bu; W2], written in place (no second copy of the experts)
        parts = split_neurons(moe.experts, gated=True)
        parts.w_in.copy_(gate_up[:, :inter].transpose(1, 2))
        parts.w_up.copy_(gate_up[:, inter:].transpose(1, 2))
        parts.w_out.copy_(down)
        parts.b_in.zero_()
        parts.b_up.zero_()
        moe.expert_bias.zero_()
        if moe.neuron_mode.static is not None:
            moe.neuron_mode.static.copy_(static_estimate(moe.experts, static_weights))
            moe.bias_mode.static.zero_()
        return cls(moe)

    @torch.no_grad()
    def bank_weights(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The experts as transformers stores them, from each expert's computational parameters (PAD-Net eq. 4
        per expert, [`MoEFeedForward.expert_weights`][padnet.layers.moe.MoEFeedForward.expert_weights]):
        `(gate_up_proj (E, 2F, H), down_proj (E, H, F), exact)`; `exact` is False when the experts learnt
        biases, which a bank has no place for."""
        neurons, bias = self.moe.expert_weights()
        parts = split_neurons(neurons, gated=True)  # w_in, w_up, w_out: (E, H, F)
        gate_up = torch.cat([parts.w_in, parts.w_up], dim=2).transpose(1, 2)  # (E, H, 2F) -> (E, 2F, H)
        exact = not bool(parts.b_in.any() or parts.b_up.any() or bias.any())
        return gate_up.contiguous(), parts.w_out.contiguous(), exact

    def deployed(self, bn: nn.BatchNorm2d | None = None) -> ExpertBank:
        """The bank with its experts in their inference form ([`DeployedMoE`][padnet.layers.moe.DeployedMoE],
        computational parameters merged once), called as before; `bn` is never given."""
        return ExpertBank(self.moe.deployed())

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        weights = top_k_weights.to(hidden_states.dtype)
        routing = Routing(top_k_index, weights, None, None)
        return self.moe.route(hidden_states, routing, weights.sum(1, keepdim=True))

    def extra_repr(self) -> str:
        return "called as transformers' experts: (hidden_states, top_k_index, top_k_weights)"
