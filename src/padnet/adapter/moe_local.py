"""Layer-local PAD compression of one bank of experts, from the activations that reach it.

Compressing a large MoE layer by layer ([`padnet.training.nlp.layerwise`][padnet.training.nlp.layerwise]) cannot
back-propagate the language-model loss through the whole model. Each bank is then compressed against its own
output on calibration tokens: the objective is the layer's reconstruction error

    L(M) = ½ Σₜ ‖yₜ(M) − yₜ‖²,   yₜ = Σₑ gₜₑ · expertₑ(xₜ) over the token's top-k experts,

which the original experts (M = 1) make zero. Its gradient with respect to the mask, the score of PAD-Net eq. 7,
is therefore zero at M = 1, and IMP (PAD-Net eq. 5–9) scores with the next term of the Taylor expansion: the
diagonal Gauss-Newton curvature of L with respect to each expert's computational parameters Wₑ (PAD-Net eq. 4),
Σₜ gₜₑ² (∂yₜ/∂Wₑ)², times the squared change a mode switch makes, (∂Wₑ/∂M)² = (λd Θᵉ − λs Θ̄)². An element's
score is the error its turning static would add (Optimal Brain Damage's saliency, LeCun et al. 1990), summed
over the experts that share the mask element; the curvature is re-evaluated with the current masks at every IMP
iteration. The same curvature is the Fisher information of the layer's output under a Gaussian model, the
weights of the layer-local Fisher-weighted Θ̄ (D²-MoE's best shared base, arXiv 2502.17298).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from padnet.adapter.moe_convert import set_static
from padnet.errors import ConfigError
from padnet.layers.experts import ExpertBank
from padnet.layers.grouped_experts import split_neurons
from padnet.partitioning.imp import apply_partition, check_dynamic_elements, check_kappa, imp_schedule
from padnet.partitioning.scores import masked_tensors

LSQ_STEPS = 100  # Adam steps of the least-squares Θ̄
LSQ_LR = 0.01  # their learning rate, relative to the root mean square of Θ̄


@dataclass
class BankCalibration:
    """What reached one bank of experts on the calibration tokens, and what it returned.

    Attributes:
        hidden: (N, H) the tokens' hidden states, N = every calibration token.
        index: (N, k) the experts each token was routed to.
        weights: (N, k) their routing weights.
        target: (N, H) the original bank's output (the reconstruction target).
    """

    hidden: torch.Tensor
    index: torch.Tensor
    weights: torch.Tensor
    target: torch.Tensor

    def routed(self, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the hidden states of the tokens routed to `expert` (n, H), their routing weights (n, 1))."""
        token, slot = torch.where(self.index == expert)
        return self.hidden[token], self.weights[token, slot].unsqueeze(1)

    def load(self, num_experts: int) -> torch.Tensor:
        """(E,) how many (token, expert) assignments each expert got, float64."""
        return torch.bincount(self.index.reshape(-1).cpu(), minlength=num_experts).double()


@contextlib.contextmanager
def record_banks(model: nn.Module, names: list[str]):
    """Within the block, record every call of the banks of experts `names` (transformers banks or
    [`ExpertBank`][padnet.layers.experts.ExpertBank]s, called as `(hidden (N, H), top_k_index, top_k_weights)`);
    yields a dict that holds, after the block, a [`BankCalibration`][padnet.adapter.moe_local.BankCalibration] per
    name (the calls concatenated, detached, float32). A bank no call reached is left out."""
    calls: dict[str, list] = {name: [] for name in names}

    def keep(name: str, args, kwargs, output) -> None:
        values = [*args, *(kwargs[k] for k in ("top_k_index", "top_k_weights") if k in kwargs)]
        calls[name].append([t.detach() for t in values[:3]] + [output.detach()])

    hooks = [
        model.get_submodule(name).register_forward_hook(
            lambda mod, args, kwargs, out, name=name: keep(name, args, kwargs, out), with_kwargs=True
        )
        for name in names
    ]
    recorded: dict[str, BankCalibration] = {}
    try:
        yield recorded
    finally:
        for hook in hooks:
            hook.remove()
    for name, parts in calls.items():
        if parts:
            hidden, index, weights, target = (torch.cat(column) for column in zip(*parts))
            recorded[name] = BankCalibration(hidden.float(), index, weights.float(), target.float())


def _activation_and_slope(activation, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(act(pre), act'(pre)) of an element-wise activation, its slope by autograd."""
    with torch.enable_grad():
        pre = pre.detach().requires_grad_(True)
        out = activation(pre)
        (slope,) = torch.autograd.grad(out.sum(), pre)
    return out.detach(), slope


def _scales(moe) -> tuple[float, float]:
    """(λs, λd) of a partially dynamic layer, (1, 1) of a fully dynamic one."""
    return tuple(float(t) for t in moe.scale()) if moe.scale is not None else (1.0, 1.0)


def _expert_curvatures(bank: ExpertBank, data: BankCalibration):
    """Yields, expert by expert (so that no (E, R, F) tensor is built), `(e, curvature of its neuron columns
    (R, F), of its output bias (H,))`: see [`reconstruction_curvature`][padnet.adapter.moe_local.reconstruction_curvature].
    Experts no token reached are skipped (zero curvature)."""
    moe = bank.moe
    lam_s, lam_d = _scales(moe)
    for e in range(moe.num_experts):
        x, g = data.routed(e)
        if not len(x):
            continue
        neurons = moe.neuron_mode.merged(moe.experts[e : e + 1].detach(), lam_s, lam_d)[0].float()  # (R, F)
        parts = split_neurons(neurons, moe.gated)
        x, g2 = x.to(neurons.device), g.to(neurons.device).square()  # (n, H), (n, 1)
        act, slope = _activation_and_slope(moe.activation, torch.addmm(parts.b_in, x, parts.w_in))
        reach = parts.w_out.square().sum(0)  # c_f: (F,)
        x2 = x.square()
        if parts.w_up is not None:
            up = torch.addmm(parts.b_up, x, parts.w_up)
            gate_terms, up_terms, h = g2 * (slope * up).square(), g2 * act.square(), act * up
        else:
            gate_terms, up_terms, h = g2 * slope.square(), None, act
        rows = [x2.t() @ gate_terms * reach, gate_terms.sum(0, keepdim=True) * reach]
        if up_terms is not None:
            rows += [x2.t() @ up_terms * reach, up_terms.sum(0, keepdim=True) * reach]
        rows.append((g2 * h.square()).sum(0).expand(moe.hidden_size, -1))
        yield e, torch.cat(rows), g2.sum().expand(moe.hidden_size)


@torch.no_grad()
def reconstruction_curvature(bank: ExpertBank, data: BankCalibration) -> tuple[torch.Tensor, torch.Tensor]:
    """The diagonal Gauss-Newton curvature of the bank's reconstruction error ½ Σₜ ‖yₜ − targetₜ‖² with respect to
    every expert's computational parameters, at their current values (see the module docstring).

    Returns:
        (neurons (E, R, F) in the layout of [`split_neurons`][padnet.layers.grouped_experts.split_neurons],
        output biases (E, H)), float32. For expert e, with x its tokens, g their routing weights,
        a = x Wgᵀ + bg, u = x Wuᵀ + bu, h = act(a) ⊙ u and c_f = ‖W2[:, f]‖²: the gate rows
        c_f Σ g² (act'(a) u)_f² x_j², the up rows c_f Σ g² act(a)_f² x_j², the down rows Σ g² h_f², the
        output bias Σ g² (an ungated FFN has no up rows and h = act(a)).
    """
    moe = bank.moe
    curvature = torch.zeros(moe.experts.shape, dtype=torch.float32, device=moe.experts.device)
    bias = torch.zeros(moe.num_experts, moe.hidden_size, dtype=torch.float32, device=moe.experts.device)
    for e, neurons, output_bias in _expert_curvatures(bank, data):
        curvature[e], bias[e] = neurons, output_bias
    return curvature, bias


def _mode_change(mode, factors: torch.Tensor, lam_s: float, lam_d: float) -> torch.Tensor:
    """∂W/∂M of expert elements `factors` (k, *shape): λd Θᵉ − λs Θ̄ (PAD-Net eq. 4), or Θᵉ without Θ̄ (MoE-P)."""
    change = factors.detach().float() * lam_d
    return change if mode.static is None else change - mode.static.detach().float() * lam_s


@torch.no_grad()
def reconstruction_scores(bank: ExpertBank, data: BankCalibration) -> list[torch.Tensor]:
    """The layer-local IMP scores of the bank's masks (in the order of
    [`masked_tensors`][padnet.partitioning.scores.masked_tensors]): the reconstruction error each mask element
    would add by turning static, curvature × (∂W/∂M)² summed over the experts (see the module docstring),
    accumulated expert by expert."""
    moe = bank.moe
    lam_s, lam_d = _scales(moe)
    (_, neuron_mode, experts), (_, bias_mode, biases) = moe.mode_pairs()
    neurons = torch.zeros(experts.shape[1:], dtype=torch.float32, device=experts.device)  # (R, F)
    bias = torch.zeros(biases.shape[1:], dtype=torch.float32, device=experts.device)
    for e, curvature, output_bias in _expert_curvatures(bank, data):
        neurons += curvature * _mode_change(neuron_mode, experts[e], lam_s, lam_d).square()
        bias += output_bias.reshape(bias.shape) * _mode_change(bias_mode, biases[e], lam_s, lam_d).square()
    return [neuron_mode.pool_scores(neurons[None]), bias_mode.pool_scores(bias[None])]


def partition_bank(bank: ExpertBank, data: BankCalibration, kappa: float, iterations: int) -> float:
    """IMP of one bank's masks with the layer-local scores
    ([`reconstruction_scores`][padnet.adapter.moe_local.reconstruction_scores]; PAD-Net eq. 5–9): from M = 1,
    `iterations` rounds on the exponential schedule to exactly round(κ·m) dynamic mask elements of the bank's m.
    Returns the dynamic ratio reached.

    Raises:
        ConfigError: a bank without masks (MoE), or a κ out of (0, 1] or that keeps no element.
    """
    kappa = check_kappa(kappa)
    tensors = masked_tensors(bank)
    if not tensors:
        raise ConfigError("the bank has no masks to partition (compress_experts with mode='pad' or 'prune')")
    check_dynamic_elements(tensors, kappa)
    with torch.no_grad():
        for _, mode, _ in tensors:
            mode.mask.fill_(1.0)
    for fraction in imp_schedule(1.0, kappa, iterations):
        apply_partition(tensors, reconstruction_scores(bank, data), fraction, "global")
    masks = [mode.mask for _, mode, _ in tensors]
    return sum(float(m.sum()) for m in masks) / sum(m.numel() for m in masks)


def set_static_by_curvature(bank: ExpertBank, data: BankCalibration) -> None:
    """Θ̄ of a PAD-compressed bank as the experts' mean weighted element by element by the curvature of the
    layer's reconstruction error ([`reconstruction_curvature`][padnet.adapter.moe_local.reconstruction_curvature],
    the Fisher information of the layer's output): the layer-local Fisher-weighted Θ̄. Run it before the
    partition (M = 1, the original experts).

    Raises:
        ConfigError: a bank without Θ̄ (not PAD), or calibration tokens that reach no expert.
    """
    _require_static(bank)
    curvature, bias = reconstruction_curvature(bank, data)
    if not float(curvature.sum()) > 0:
        raise ConfigError("the calibration tokens give the bank no curvature to weight Θ̄ with")
    set_static(bank, curvature, bias)


def set_static_by_least_squares(
    bank: ExpertBank, data: BankCalibration, steps: int = LSQ_STEPS, lr: float = LSQ_LR
) -> list[float]:
    """Θ̄ of a PAD-compressed bank that minimises the bank's relative output error on the calibration tokens for
    its current masks, ‖y(Θ̄) − target‖² / ‖target‖², by `steps` full-batch Adam steps from the current Θ̄ (the
    error is quadratic in the down-projection rows and not in the gate and up rows, whose activation follows
    them, so no closed form covers all of Θ̄). The learning rate is `lr` times the root mean square of Θ̄; the
    Θ̄ of the lowest error is kept, so the result is never worse than the start. Only Θ̄ changes. Returns the
    errors before each step and after the last.

    Raises:
        ConfigError: a bank without Θ̄, or `steps` < 1 or `lr` <= 0.
    """
    statics = _require_static(bank)
    if not (isinstance(steps, int) and steps >= 1 and lr > 0):
        raise ConfigError(f"least-squares Θ̄ needs steps >= 1 and lr > 0, got {steps!r} and {lr!r}")
    params = list(bank.parameters())
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(any(p is s for s in statics))
    rms = float(statics[0].detach().float().square().mean().sqrt())
    optimizer = torch.optim.Adam(statics, lr=lr * max(rms, torch.finfo(torch.float32).eps))
    best = [s.detach().clone() for s in statics]
    scale = data.target.square().sum().clamp_min(torch.finfo(torch.float32).tiny)
    dtype = bank.moe.experts.dtype
    hidden, weights = data.hidden.to(dtype), data.weights.to(dtype)
    errors = []
    was_training = bank.training
    bank.eval()
    try:
        for step in range(steps + 1):
            with torch.set_grad_enabled(step < steps):
                error = (bank(hidden, data.index, weights).float() - data.target).square().sum() / scale
            errors.append(float(error.detach()))
            if errors[-1] <= min(errors):
                best = [s.detach().clone() for s in statics]
            if step < steps:
                optimizer.zero_grad()
                error.backward()
                optimizer.step()
    finally:
        with torch.no_grad():
            for s, value in zip(statics, best):
                s.copy_(value)
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)
            p.grad = None
        bank.train(was_training)
    return errors


def _require_static(bank: ExpertBank) -> list[nn.Parameter]:
    """Θ̄ of the bank's neurons and output biases; ConfigError when it has none."""
    moe = bank.moe
    static = getattr(getattr(moe, "neuron_mode", None), "static", None)
    if static is None:
        raise ConfigError("the bank has no static part Θ̄ (compress_experts with mode='pad')")
    return [static, moe.bias_mode.static]
