"""Expert FFNs in neuron-column layout and the grouped computation of E experts on their tokens (MoE dispatch).

An FFN's weights are stored as neuron columns (R, F): column j holds everything FFN neuron j owns —
`[W1ᵀ; b1; W2]` (R = 2H + 1) or, gated, `[Wgᵀ; bg; Wuᵀ; bu; W2]` (R = 3H + 2) — so masking a neuron
(PAD-Net's neuron granularity) is masking a column. [`dispatch`][padnet.layers.grouped_experts.dispatch] sorts
the N·k (token, expert) assignments of a top-k router by expert and runs each expert as one matmul per linear
on its contiguous block of tokens (dropless).

For `torch.compile` the grouped computation is one custom operator, `padnet::grouped_experts`, with its
backward `padnet::grouped_experts_backward`: the block sizes depend on the routing's values, which a compiled
graph cannot hold, so the compiler treats the operator as one opaque call with outputs of known shape instead
of breaking the graph. That needs an activation the operator can name (GELU, tanh GELU, SiLU —
[`activation_kind`][padnet.layers.grouped_experts.activation_kind]); other activations run through an autograd
function of the same code, which the compiler cannot trace (one graph break per layer).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# the activations the custom operator runs, by the name activation_kind gives them
KNOWN_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": functools.partial(F.gelu, approximate="tanh"),
    "silu": F.silu,
}


class NeuronParts(NamedTuple):
    """An FFN's weights as views of its neuron columns (..., R, F), column j holding what neuron j owns.

    Attributes:
        w_in: (..., H, F), the first map W1ᵀ, or the gate Wgᵀ of a gated FFN.
        b_in: (..., F), the first map's bias b1, or the gate's bg.
        w_up: the up map of a gated FFN Wuᵀ, else None.
        b_up: the up map's bias bu of a gated FFN, else None.
        w_out: (..., H, F), the second map W2.
    """

    w_in: torch.Tensor
    b_in: torch.Tensor
    w_up: torch.Tensor | None
    b_up: torch.Tensor | None
    w_out: torch.Tensor


def neuron_rows(hidden: int, gated: bool) -> int:
    """R, the rows of one neuron column: 2H + 1 ([W1ᵀ; b1; W2]) or, gated, 3H + 2 ([Wgᵀ; bg; Wuᵀ; bu; W2])."""
    return 3 * hidden + 2 if gated else 2 * hidden + 1


def split_neurons(neurons: torch.Tensor, gated: bool = False) -> NeuronParts:
    """Neuron columns (..., R, F) → [`NeuronParts`][padnet.layers.grouped_experts.NeuronParts] of contiguous-row
    views (R from [`neuron_rows`][padnet.layers.grouped_experts.neuron_rows])."""
    if gated:
        hidden = (neurons.shape[-2] - 2) // 3
        wg, bg, wu, bu, w2 = neurons.split([hidden, 1, hidden, 1, hidden], dim=-2)
        return NeuronParts(wg, bg.squeeze(-2), wu, bu.squeeze(-2), w2)
    hidden = (neurons.shape[-2] - 1) // 2
    w1t, b1, w2 = neurons.split([hidden, 1, hidden], dim=-2)
    return NeuronParts(w1t, b1.squeeze(-2), None, None, w2)


def neuron_ffn(x: torch.Tensor, parts: NeuronParts, activation) -> torch.Tensor:
    """One FFN without its output bias, `x` (n, H) → (n, H): act(x W1ᵀ + b1) W2ᵀ, or gated
    (act(x Wgᵀ + bg) ⊙ (x Wuᵀ + bu)) W2ᵀ (SwiGLU with SiLU, as in Llama)."""
    h = activation(torch.addmm(parts.b_in, x, parts.w_in))
    if parts.w_up is not None:
        h = h * torch.addmm(parts.b_up, x, parts.w_up)
    return h @ parts.w_out.t()


def activation_kind(activation) -> str | None:
    """`"gelu"`, `"gelu_tanh"` or `"silu"` when `activation` computes torch's exact GELU, tanh GELU or
    SiLU (probed once on a grid, so Hugging Face's activation modules count), else None. Known kinds get
    torch's own derivative in the grouped experts' backward and compile as one custom operator."""
    probe = torch.linspace(-6.0, 6.0, 241)
    with torch.no_grad():
        out = activation(probe)
        for kind, reference in KNOWN_ACTIVATIONS.items():
            if torch.equal(out, reference(probe)):
                return kind
    return None


def _activation_grad(grad: torch.Tensor, pre: torch.Tensor, activation, kind: str | None) -> torch.Tensor:
    """∂L/∂pre from ∂L/∂act(pre): torch's derivative for a known `kind`, autograd otherwise."""
    if kind in ("gelu", "gelu_tanh"):
        return torch.ops.aten.gelu_backward(grad, pre, approximate="tanh" if kind == "gelu_tanh" else "none")
    if kind == "silu":
        return torch.ops.aten.silu_backward(grad, pre)
    with torch.enable_grad():
        p = pre.detach().requires_grad_(True)
        (out,) = torch.autograd.grad(activation(p), p, grad)
    return out


def _experts_forward(xs, experts, bias, counts: list[int], activation, gated: bool):
    """E FFNs, expert e on its block of `counts[e]` consecutive rows of `xs` (M, H) → (out (M, H), pre (M, F),
    up (M, F) or None): the pre-activations (of the gate) and the up projections are kept for the backward."""
    out = xs.new_empty(xs.shape[0], xs.shape[1])
    pre = xs.new_empty(xs.shape[0], experts.shape[2])
    up = xs.new_empty(xs.shape[0], experts.shape[2]) if gated else None
    parts = split_neurons(experts, gated)
    start = 0
    for e, count in enumerate(counts):
        rows = slice(start, start + count)
        torch.addmm(parts.b_in[e], xs[rows], parts.w_in[e], out=pre[rows])
        h = activation(pre[rows])
        if gated:
            h = h * torch.addmm(parts.b_up[e], xs[rows], parts.w_up[e], out=up[rows])
        torch.addmm(bias[e], h, parts.w_out[e].t(), out=out[rows])
        start += count
    return out, pre, up


def _experts_backward(grad_out, xs, experts, pre, up, counts: list[int], activation, kind, gated: bool):
    """Gradients of [`_experts_forward`][padnet.layers.grouped_experts._experts_forward] → (∂xs (M, H),
    ∂experts (E, R, F), ∂bias (E, H)). Each expert's weight gradients are written straight into its slice of
    one (E, R, F) tensor, so nothing is stacked afterwards (those copies cost about 6 % of a training step
    here); the activation is recomputed from the kept pre-activations."""
    parts = split_neurons(experts, gated)
    grad_x = torch.empty_like(xs)
    grad_experts = torch.empty_like(experts)
    grad_bias = experts.new_zeros(experts.shape[0], xs.shape[1])
    start = 0
    for e, count in enumerate(counts):
        if count == 0:
            grad_experts[e] = 0
            continue
        rows = slice(start, start + count)
        g = grad_out[rows]  # (n_e, H)
        grads = split_neurons(grad_experts[e], gated)  # views into this expert's gradient
        grad_h = g @ parts.w_out[e]  # (n_e, F)
        act = activation(pre[rows])
        torch.mm(g.t(), act * up[rows] if gated else act, out=grads.w_out)  # dW2 (H, F)
        grad_bias[e] = g.sum(0)
        if gated:
            grad_up = grad_h * act  # ∂L/∂(x Wuᵀ + bu)
            grad_h = grad_h * up[rows]  # ∂L/∂act(x Wgᵀ + bg)
            torch.mm(xs[rows].t(), grad_up, out=grads.w_up)
            grads.b_up.copy_(grad_up.sum(0))
        grad_pre = _activation_grad(grad_h, pre[rows], activation, kind)
        torch.mm(xs[rows].t(), grad_pre, out=grads.w_in)  # dW1ᵀ (H, F)
        grads.b_in.copy_(grad_pre.sum(0))
        torch.mm(grad_pre, parts.w_in[e].t(), out=grad_x[rows])
        if gated:
            grad_x[rows].addmm_(grad_up, parts.w_up[e].t())
        start += count
    return grad_x, grad_experts, grad_bias


@torch.library.custom_op("padnet::grouped_experts", mutates_args=())
def _grouped_op(
    xs: torch.Tensor, experts: torch.Tensor, bias: torch.Tensor, counts: torch.Tensor, kind: str, gated: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out, pre, up = _experts_forward(xs, experts, bias, counts.tolist(), KNOWN_ACTIVATIONS[kind], gated)
    return out, pre, xs.new_empty(0, experts.shape[2]) if up is None else up  # (M, F), or (0, F) ungated


@_grouped_op.register_fake
def _(xs, experts, bias, counts, kind, gated):
    rows, width = xs.shape[0], experts.shape[2]
    return (
        xs.new_empty(rows, xs.shape[1]),
        xs.new_empty(rows, width),
        xs.new_empty(rows if gated else 0, width),
    )


@torch.library.custom_op("padnet::grouped_experts_backward", mutates_args=())
def _grouped_backward_op(
    grad_out: torch.Tensor,
    xs: torch.Tensor,
    experts: torch.Tensor,
    pre: torch.Tensor,
    up: torch.Tensor,
    counts: torch.Tensor,
    kind: str,
    gated: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _experts_backward(
        grad_out,
        xs,
        experts,
        pre,
        up if gated else None,
        counts.tolist(),
        KNOWN_ACTIVATIONS[kind],
        kind,
        gated,
    )


@_grouped_backward_op.register_fake
def _(grad_out, xs, experts, pre, up, counts, kind, gated):
    return torch.empty_like(xs), torch.empty_like(experts), experts.new_empty(experts.shape[0], xs.shape[1])


def _save_for_backward(ctx, inputs, output) -> None:
    xs, experts, _, counts, kind, gated = inputs
    _, pre, up = output
    ctx.save_for_backward(xs, experts, pre, up, counts)
    ctx.kind, ctx.gated = kind, gated


def _grouped_op_backward(ctx, grad_out, grad_pre, grad_up):
    xs, experts, pre, up, counts = ctx.saved_tensors
    grads = _grouped_backward_op(grad_out.contiguous(), xs, experts, pre, up, counts, ctx.kind, ctx.gated)
    return *grads, None, None, None


_grouped_op.register_autograd(_grouped_op_backward, setup_context=_save_for_backward)


class _GroupedExperts(torch.autograd.Function):
    """The grouped experts for an activation the custom operator cannot name (see the module docstring)."""

    @staticmethod
    def forward(ctx, xs, experts, bias, counts, activation, gated):
        counts = counts.tolist()
        out, pre, up = _experts_forward(xs, experts, bias, counts, activation, gated)
        ctx.save_for_backward(xs, experts, pre, up)
        ctx.counts, ctx.activation, ctx.gated = counts, activation, gated
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        xs, experts, pre, up = ctx.saved_tensors
        grads = _experts_backward(grad_out, xs, experts, pre, up, ctx.counts, ctx.activation, None, ctx.gated)
        return *grads, None, None, None


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls on `x` run in: the autocast dtype inside `torch.autocast` for `x`'s device, else
    `x.dtype`."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def dispatch(
    x: torch.Tensor,
    routing,
    experts: torch.Tensor,
    bias: torch.Tensor,
    activation,
    base: torch.Tensor | None = None,
    kind: str | None = None,
    gated: bool = False,
) -> torch.Tensor:
    """Dropless top-k dispatch: `base` + Σ over each token's k experts of gate · expert(token).

    Args:
        x: tokens (N, H).
        routing: a [`Routing`][padnet.layers.moe.Routing] (or anything with its `indices`, each token's experts
            (N, k), and `gates`, their weights (N, k) in any float dtype).
        experts: (E, R, F) neuron columns ([`neuron_rows`][padnet.layers.grouped_experts.neuron_rows]; F may be 0).
        bias: (E, H) output biases.
        activation: the FFN non-linearity.
        base: (N, H) added to, or None (zeros).
        kind: [`activation_kind`][padnet.layers.grouped_experts.activation_kind] of `activation`: a known kind
            runs as the custom operator (compiles without a graph break) with torch's own derivative.
        gated: the experts are gated FFNs.

    Returns:
        (N, H) in [`compute_dtype`][padnet.layers.grouped_experts.compute_dtype] of `x`: inside `torch.autocast`
        the experts run in its dtype (as an autocast matmul would), the gates are cast to it.
    """
    n, k = routing.indices.shape
    dtype = compute_dtype(x)
    flat = routing.indices.reshape(-1)  # (N·k,) token-major
    order = flat.argsort(stable=True)
    # tokens per expert (E,): a scatter keeps the shape fixed, where bincount's would depend on the values
    counts = torch.zeros(experts.shape[0], dtype=torch.long, device=flat.device).scatter_add_(
        0, flat, torch.ones_like(flat)
    )
    tokens = order // k  # token of each sorted assignment
    xs, experts, bias = x.index_select(0, tokens).to(dtype), experts.to(dtype), bias.to(dtype)
    with torch.autocast(x.device.type, enabled=False):
        if kind in KNOWN_ACTIVATIONS:
            ys = _grouped_op(xs, experts, bias, counts, kind, gated)[0]  # (N·k, H)
        else:
            ys = _GroupedExperts.apply(xs, experts, bias, counts, activation, gated)
    weighted = ys * routing.gates.reshape(-1).index_select(0, order).to(dtype).unsqueeze(1)
    start = x.new_zeros(n, x.shape[1], dtype=dtype) if base is None else base.to(dtype)
    return start.index_add_(0, tokens, weighted)
