"""Mixture-of-Experts feed-forward layers: noisy top-k routing, dropless dispatch, PAD-MoE and MoE-P.

An MoE feed-forward layer (Shazeer et al. 2017, "Outrageously Large Neural Networks"; PAD-Net eq. 2) holds
E experts, each a two-linear FFN `W2ᵉ act(W1ᵉ x + b1ᵉ) + b2ᵉ` or a gated one
`W2ᵉ (act(Wgᵉ x + bgᵉ) ⊙ (Wuᵉ x + buᵉ)) + b2ᵉ` (SwiGLU in Llama, Mistral and Qwen). A router sends every token
to its top-k experts and sums their outputs weighted by the gates, renormalised over the k chosen experts.

The experts are stored as one tensor, `experts` (E, R, F): rows `[W1ᵉᵀ (H, F); b1ᵉ (1, F); W2ᵉ (H, F)]`
(R = 2H + 1) or, gated, `[Wgᵉᵀ; bgᵉ; Wuᵉᵀ; buᵉ; W2ᵉ]` (R = 3H + 2), so column j holds everything FFN neuron j
owns and each block is a contiguous matrix for the matmuls; `expert_bias` (E, H) holds b2ᵉ.
PAD-MoE (PAD-Net eq. 3–4 applied to experts) masks both with [`PartialMode`][padnet.layers.modes.PartialMode]:
one mask M shared by the E experts (PAD-Net §4.2: "M can be directly applied to parallel experts") and one
static tensor per layer, so expert e computes with `λd · M ⊙ Θᵉ + λs · (1 − M) ⊙ Θ̄`. With
`granularity="neuron"` a mask element covers a whole neuron column: static neurons then form one dense FFN
shared by all tokens and dynamic neurons form E narrower experts. `mode="prune"` (MoE-P, PAD-Net Table 4)
zeroes the masked elements instead.

Dispatch is dropless: the N·k (token, expert) pairs are sorted by expert and each expert runs one matmul
per linear on its contiguous block ([`padnet.layers.grouped_experts`][padnet.layers.grouped_experts], which also
compiles it; docs/moe.md has the speed measured here). The router runs in float32 inside `torch.autocast`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from padnet.errors import ConfigError, check_choice
from padnet.layers.grouped_experts import (
    activation_kind,
    dispatch,
    neuron_ffn,
    neuron_rows,
    split_neurons,
)
from padnet.layers.modes import ScaleFactors, make_mode

MOE_MODES = ("dynamic", "pad", "prune")
MOE_GRANULARITIES = ("element", "neuron")
MAX_EXPERTS = 256  # the most experts a layer read from a file or a configuration may ask for


class Routing(NamedTuple):
    """What a router decides for N tokens.

    Attributes:
        indices: expert ids, (N, k).
        gates: weights summing to 1 per token, (N, k); float32 from padnet's router.
        importance: summed gates, (E,), float32.
        load: (smooth) token counts per expert, (E,), float32.
    """

    indices: torch.Tensor
    gates: torch.Tensor
    importance: torch.Tensor
    load: torch.Tensor


def cv_squared(values: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation Var(v) / (mean(v)² + 1e-10), population variance (Shazeer et al.
    2017, eq. 6–7); 0 for a single value. `values` (E,) → 0-d."""
    if values.numel() < 2:
        return values.new_zeros(())
    return values.float().var(correction=0) / (values.float().mean() ** 2 + 1e-10)


def load_balancing_loss(routing: Routing, weight: float = 1e-2) -> torch.Tensor:
    """`weight · (cv²(importance) + cv²(load))` (Shazeer et al. 2017 eq. 6 and 11). The default weight 1e-2 is
    padnet's choice: the PAD-Net papers do not state one."""
    return weight * (cv_squared(routing.importance) + cv_squared(routing.load))


class NoisyTopKRouter(nn.Module):
    """Noisy top-k gating (Shazeer et al. 2017, §2.1 and appendix A).

    Logits `x W_g`; while training, Gaussian noise with standard deviation `softplus(x W_noise) + ε` is
    added. Each token keeps its k largest logits; the gates are their softmax (renormalised over the k).
    Both weight matrices start at zero, so every expert is equally likely at initialisation. `load` is the
    smooth estimate of the expected number of tokens per expert (eq. 8–10) while noisy, the token count
    otherwise.

    Args:
        hidden_size: H, the token width.
        num_experts: E ≥ 1.
        top_k: k ∈ [1, E].
        noisy: add the trainable noise while training.
        noise_epsilon: ε, the smallest noise standard deviation.

    `forward(x)`: `x` (N, H) → [`Routing`][padnet.layers.moe.Routing].

    Raises:
        ConfigError: E < 1 or k outside [1, E].
    """

    def __init__(
        self,
        hidden_size: int,
        num_experts: int = 8,
        top_k: int = 2,
        noisy: bool = True,
        noise_epsilon: float = 1e-2,
    ):
        super().__init__()
        if num_experts < 1 or not 1 <= top_k <= num_experts:
            raise ConfigError(f"need 1 <= top_k <= num_experts, got top_k {top_k} and {num_experts} experts")
        self.num_experts, self.top_k, self.noise_epsilon = num_experts, top_k, noise_epsilon
        self.weight = nn.Parameter(torch.zeros(hidden_size, num_experts))
        self.noise_weight = nn.Parameter(torch.zeros(hidden_size, num_experts)) if noisy else None

    def forward(self, x: torch.Tensor) -> Routing:
        # in float32 also inside torch.autocast and in a half-precision model (as transformers' Mixtral routes):
        # near-equal logits decide the top k, and the gates, importance and load feed the balancing loss
        with torch.autocast(x.device.type, enabled=False):
            return self._route(x.float())

    def _route(self, x: torch.Tensor) -> Routing:
        clean = x @ self.weight.float()  # (N, E)
        noisy = self.training and self.noise_weight is not None
        if noisy:
            std = F.softplus(x @ self.noise_weight.float()) + self.noise_epsilon
            logits = clean + torch.randn_like(clean) * std
        else:
            logits = clean
        k, e = self.top_k, self.num_experts
        top, indices = logits.topk(min(k + 1, e), dim=1)  # (N, k+1) sorted descending
        gates = torch.softmax(top[:, :k], dim=1)  # renormalised over the k chosen experts
        dense = torch.zeros_like(logits).scatter(1, indices[:, :k], gates)
        importance = dense.sum(0)
        if noisy and k < e:
            # P(expert's noisy logit stays in the top k | other noise fixed) (eq. 9)
            threshold_in, threshold_out = top[:, k : k + 1], top[:, k - 1 : k]
            is_in = logits > threshold_in
            p_in = torch.special.ndtr((clean - threshold_in) / std)
            p_out = torch.special.ndtr((clean - threshold_out) / std)
            load = torch.where(is_in, p_in, p_out).sum(0)
        else:
            load = (dense > 0).sum(0).float()
        return Routing(indices[:, :k], gates, importance, load)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, top_k={self.top_k}, noisy={self.noise_weight is not None}"


def _route(
    x: torch.Tensor,
    routing: Routing,
    experts: torch.Tensor,
    bias: torch.Tensor,
    static: torch.Tensor | None,
    activation,
    kind: str | None,
    gated: bool,
    gate_sums: torch.Tensor | None,
) -> torch.Tensor:
    """Computational parameters applied to `x` (N, H) for `routing`: the shared static neurons (weighted by
    `gate_sums` (N, 1) when given) plus the dispatched experts → (N, H)."""
    shared = None
    if static is not None:
        shared = neuron_ffn(x, split_neurons(static, gated), activation)
        if gate_sums is not None:
            shared = shared * gate_sums
    return dispatch(x, routing, experts, bias, activation, shared, kind, gated)


class MoEFeedForward(nn.Module):
    """Mixture-of-Experts FFN, fully dynamic (MoE), partially dynamic (PAD-MoE) or pruned (MoE-P).

    Args:
        hidden_size: H.
        intermediate_size: F, neurons per expert.
        num_experts: E (default 8, PAD-Net §5).
        top_k: experts per token (default 2).
        activation: the FFN non-linearity (a module or callable; default GELU).
        gated: gated experts (act(x Wgᵀ + bg) ⊙ (x Wuᵀ + bu)) W2ᵀ + b2, as the SwiGLU FFNs of Llama, Mistral and
            Qwen; else act(x W1ᵀ + b1) W2ᵀ + b2.
        router: build the noisy top-k router; without one the layer is a bank of experts that another router
            drives through [`route`][padnet.layers.moe.MoEFeedForward.route] ([`ExpertBank`][padnet.layers.experts.ExpertBank]).
        mode: `"dynamic"` (MoE), `"pad"` (PAD-MoE: masked elements use the static parameters) or
            `"prune"` (MoE-P: masked elements are zero).
        granularity: `"element"` (one mask element per parameter) or `"neuron"` (one per FFN neuron, a
            column of `experts`, and one for the output bias).
        scale_mode: scale factors of `"pad"` (`ScaleFactors` modes; default λs + λd = 2); MoE has none and
            MoE-P uses λ = 1.
        noisy: noisy gating while training.
        aux_loss_weight: weight of the load-balancing loss (default 1e-2, padnet's choice; the PAD-Net papers
            give none).

    Attributes:
        experts: (E, R, F), neuron columns of R = 2H + 1 rows [W1ᵀ; b1; W2] or, gated, 3H + 2 rows
            [Wgᵀ; bg; Wuᵀ; bu; W2] (a parameter).
        expert_bias: (E, H), the output biases b2 (a parameter).
        router: the [`NoisyTopKRouter`][padnet.layers.moe.NoisyTopKRouter] (its parameters are the layer's), or
            None without one.
        aux_loss: the layer's load-balancing losses (0-d tensor; None before any call) added up over its
            calls since [`reset_aux_loss`][padnet.layers.moe.MoEFeedForward.reset_aux_loss], for the training
            loop to add ([`padnet.layers.moe.auxiliary_loss`][padnet.layers.moe.auxiliary_loss]): a layer shared
            by several blocks (ALBERT) counts every pass. Model surgery registers a hook that resets it before
            each forward of the converted model.

    `forward(hidden)`: (..., H) → (..., H); `route(x, routing)`: the experts for a given routing.

    Raises:
        ConfigError: unknown mode or granularity, sizes < 1, bad top_k, an activation with parameters (the
            grouped experts differentiate the activation, not its parameters).
    """

    folds_batchnorm = False  # the Deployable protocol: a token layer absorbs no BatchNorm2d

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        num_experts: int = 8,
        top_k: int = 2,
        activation=None,
        mode: str = "dynamic",
        granularity: str = "element",
        scale_mode: str = "constrained",
        noisy: bool = True,
        aux_loss_weight: float = 1e-2,
        gated: bool = False,
        router: bool = True,
    ):
        super().__init__()
        check_choice("MoE mode", mode, MOE_MODES)
        check_choice("MoE mask granularity", granularity, MOE_GRANULARITIES)
        if hidden_size < 1 or intermediate_size < 1:
            raise ConfigError(
                f"hidden and intermediate sizes must be >= 1, got {hidden_size}, {intermediate_size}"
            )
        self.hidden_size, self.intermediate_size, self.num_experts = (
            hidden_size,
            intermediate_size,
            num_experts,
        )
        self.mode, self.granularity, self.aux_loss_weight = mode, granularity, aux_loss_weight
        self.router = NoisyTopKRouter(hidden_size, num_experts, top_k, noisy) if router else None
        self.activation = activation if activation is not None else nn.GELU()
        if isinstance(self.activation, nn.Module) and any(True for _ in self.activation.parameters()):
            raise ConfigError(f"MoE experts need an activation without parameters, got {self.activation}")
        self._kind, self.gated = activation_kind(self.activation), bool(gated)
        rows = neuron_rows(hidden_size, self.gated)
        self.experts = nn.Parameter(torch.empty(num_experts, rows, intermediate_size))
        self.expert_bias = nn.Parameter(torch.zeros(num_experts, hidden_size))
        nn.init.normal_(self.experts, std=0.02)
        partial = mode != "dynamic"
        semantics = "static" if mode == "pad" else "zero"
        neuron = granularity == "neuron"
        self.neuron_mode = make_mode(
            partial, (rows, intermediate_size), num_experts, "neuron" if neuron else "shared", semantics
        )
        # the output bias: element-wise masks, or one mask element for the whole vector with neuron masks
        self._bias_shape = (1, hidden_size) if neuron else (hidden_size,)
        self.bias_mode = make_mode(
            partial, self._bias_shape, num_experts, "filter" if neuron else "shared", semantics
        )
        self.scale = ScaleFactors(scale_mode if mode == "pad" else "none") if partial else None
        self.aux_loss: torch.Tensor | None = None
        self._no_grad_cache: tuple | None = None  # computational parameters of unchanged weights, no autograd
        self._structurable = partial and neuron
        self.structured = self._structurable

    @property
    def structured(self) -> bool:
        """Whether neuron masks run the static neurons as one shared FFN and only the dynamic neurons as
        experts (default where possible: PAD-MoE and MoE-P with `granularity="neuron"`). `False` forces
        the merged per-expert parameters, which compute the same; setting `True` where the layer cannot
        split raises ConfigError."""
        return self._path == "_split"

    @structured.setter
    def structured(self, value: bool) -> None:
        if value and not self._structurable:
            raise ConfigError("only a PAD-MoE or MoE-P layer with neuron masks can run structured")
        # the parameter path, chosen here (a name, so copies stay correct)
        self._path = "_split" if value else ("_dynamic" if self.mode == "dynamic" else "_merged")
        self._no_grad_cache = None

    @property
    def top_k(self) -> int | None:
        """Experts per token of the layer's own router (None without one)."""
        return None if self.router is None else self.router.top_k

    @classmethod
    def from_linears(cls, up: nn.Linear, down: nn.Linear, activation, **options) -> MoEFeedForward:
        """Sparse upcycling of `down(activation(up(x)))` ([`from_weights`][padnet.layers.moe.MoEFeedForward.from_weights] with the linears' weights)."""
        return cls.from_weights(up.weight, up.bias, down.weight, down.bias, activation, **options)

    @classmethod
    def from_weights(
        cls,
        w1: torch.Tensor,
        b1: torch.Tensor | None,
        w2: torch.Tensor,
        b2: torch.Tensor | None,
        activation,
        up: tuple[torch.Tensor, torch.Tensor | None] | None = None,
        **options,
    ) -> MoEFeedForward:
        """Sparse upcycling: every expert (and the static parameters) starts as a copy of the dense FFN
        `activation(x W1ᵀ + b1) W2ᵀ + b2` — or, with `up`, of the gated FFN
        `(activation(x W1ᵀ + b1) ⊙ (x Wuᵀ + bu)) W2ᵀ + b2` (W1 is then the gate) — so with the zero-initialised
        router the layer equals the FFN (Komatsuzaki et al. 2023, "Sparse Upcycling").

        The linear maps come as `nn.Linear` stores them (a transformers `Conv1D` stores the transpose).

        Args:
            w1: (F, H).
            b1: (F,) or None.
            w2: (H, F).
            b2: (H,) or None.
            activation: the FFN non-linearity.
            up: (Wu (F, H), bu (F,) or None), or None.
            **options: the other arguments of [`MoEFeedForward`][padnet.layers.moe.MoEFeedForward].

        Raises:
            ConfigError: the shapes are not H → F → H.
        """
        inter, hidden = w1.shape
        if tuple(w2.shape) != (hidden, inter) or (up is not None and tuple(up[0].shape) != (inter, hidden)):
            got = f"{hidden} -> {inter} and {w2.shape[1]} -> {w2.shape[0]}"
            if up is not None:
                got += f", up {up[0].shape[1]} -> {up[0].shape[0]}"
            raise ConfigError(f"FFN linears do not chain: {got}")
        layer = cls(hidden, inter, activation=activation, gated=up is not None, **options).to(
            w1.device, w1.dtype
        )
        with torch.no_grad():
            like = {"dtype": w1.dtype, "device": w1.device}

            def bias(b, n):
                return b if b is not None else torch.zeros(n, **like)

            rows = [w1.t(), bias(b1, inter).unsqueeze(0)]  # [W1ᵀ; b1]
            if up is not None:
                rows += [up[0].t(), bias(up[1], inter).unsqueeze(0)]  # [Wuᵀ; bu]
            b2 = bias(b2, hidden)
            neurons = torch.cat([*rows, w2], dim=0)  # (R, F)
            layer.experts.copy_(neurons.expand_as(layer.experts))
            layer.expert_bias.copy_(b2.expand_as(layer.expert_bias))
            if layer.mode == "pad":
                layer.neuron_mode.static.copy_(neurons)
                layer.bias_mode.static.copy_(b2.reshape(layer.bias_mode.static.shape))
        return layer

    def mode_pairs(self):
        """(suffix, mode, dynamic factors) of the masked neuron columns (E, R, F) and output biases
        (PAD-MoE and MoE-P; `MaskedLayer` protocol)."""
        if self.mode == "dynamic":
            return []
        bias = self.expert_bias.reshape(self.num_experts, *self._bias_shape)
        return [("experts", self.neuron_mode, self.experts), ("expert_bias", self.bias_mode, bias)]

    # ------------------------------------------------------------------ computational parameters

    def _dynamic(self):
        return self.experts, self.expert_bias, None

    def _merged_bias(self, lam_s, lam_d) -> torch.Tensor:
        bias = self.expert_bias.reshape(self.num_experts, *self._bias_shape)
        return self.bias_mode.merged(bias, lam_s, lam_d).reshape(self.num_experts, self.hidden_size)

    def _merged(self):
        """Per-expert computational parameters λd · M ⊙ Θᵉ + λs · (1 − M) ⊙ Θ̄ (PAD-Net eq. 4)."""
        lam_s, lam_d = self.scale()
        return self.neuron_mode.merged(self.experts, lam_s, lam_d), self._merged_bias(lam_s, lam_d), None

    def _split(self):
        """Static neurons as one shared FFN, dynamic neurons as narrower experts (neuron granularity)."""
        # mode partition swaps in a relaxed, differentiable mask while it scores (partitioning/scores.py):
        # then there is no split and the merged form keeps ∂L/∂M
        split = self.neuron_mode.structured_split()
        if split is None:
            return self._merged()
        lam_s, lam_d = self.scale()
        static_idx, dynamic_idx = split.static, split.dynamic
        experts = self.experts.index_select(2, dynamic_idx) * lam_d
        static = None
        if self.mode == "pad" and static_idx.numel():
            static = self.neuron_mode.static.index_select(1, static_idx) * lam_s
        return experts, self._merged_bias(lam_s, lam_d), static

    def computational_parameters(self):
        """(experts (E, R, F_d), output biases (E, H), shared static neurons (R, F_s) or None) as
        the forward pass uses them. In eval mode without autograd a partially dynamic layer keeps them until a
        parameter or the mask is replaced or changed in place (tracked by tensor identity and version), so
        evaluating costs what the deployed form costs; `train()` drops them."""
        if self.mode == "dynamic" or self.training or torch.is_grad_enabled():
            return getattr(self, self._path)()
        tensors = (*self.parameters(), *self.buffers())
        cache = self._no_grad_cache
        if (
            cache is None
            or len(cache[0]) != len(tensors)
            or any(t is not old or t._version != version for t, (old, version) in zip(tensors, cache[0]))
        ):
            self._no_grad_cache = cache = ([(t, t._version) for t in tensors], getattr(self, self._path)())
        return cache[1]

    def train(self, mode: bool = True) -> MoEFeedForward:
        self._no_grad_cache = None
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):
        # `.to()`, `.float()`, `.to_empty()`: the cached parameters are of the old tensors, which the cache would
        # otherwise keep alive (a layer moved to the meta device would hold its CPU copies)
        self._no_grad_cache = None
        return super()._apply(fn, recurse)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.router is None:
            raise ConfigError("this MoE layer has no router of its own: call route(x, routing)")
        x = hidden.reshape(-1, self.hidden_size)  # (N, H), N = all tokens
        routing = self.router(x)
        loss = load_balancing_loss(routing, self.aux_loss_weight)
        self.aux_loss = loss if self.aux_loss is None else self.aux_loss + loss
        return self.route(x, routing).reshape(hidden.shape)

    def route(self, x: torch.Tensor, routing: Routing, gate_sums: torch.Tensor | None = None) -> torch.Tensor:
        """The experts for `routing` (its `indices` and `gates` (N, k)): `x` (N, H) → (N, H).

        With neuron masks the static neurons run once per token as a shared FFN, weighted by the token's summed
        gates `gate_sums` (N, 1) when a router's gates do not sum to one (None: they do), since
        Σₖ gₖ · static(x) = (Σₖ gₖ) · static(x).
        """
        return _route(
            x, routing, *self.computational_parameters(), self.activation, self._kind, self.gated, gate_sums
        )

    @torch.no_grad()
    def expert_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every expert's computational parameters in full, as the forward pass uses them (PAD-Net eq. 4 per
        expert: λd · M ⊙ Θᵉ + λs · (1 − M) ⊙ Θ̄; the experts themselves for MoE): neurons (E, R, F) in the
        layout of [`split_neurons`][padnet.layers.moe.split_neurons] and output biases (E, H)."""
        neurons, bias, _ = self._dynamic() if self.mode == "dynamic" else self._merged()
        return neurons.detach(), bias.detach()

    @torch.no_grad()
    def dense_weights(self) -> tuple[torch.Tensor, torch.Tensor, str, bool]:
        """The layer as the one dense FFN it was upcycled from: `(neurons (R, F), output bias (H,), source,
        exact)`. With static parameters (PAD-MoE): λs · Θ̄ (PAD-Net eq. 4 with M = 0), source `"static"`;
        otherwise (MoE, MoE-P) the mean of the experts' computational parameters, source `"experts"`. `exact`:
        every expert computes the same (then the routed mixture, whose gates sum to one, is that FFN)."""
        neurons, bias = self.expert_weights()
        exact = bool((neurons == neurons[:1]).all() and (bias == bias[:1]).all())
        if self.mode == "pad":
            lam_s, _ = self.scale()
            static = self.bias_mode.static.reshape(self.hidden_size)
            return self.neuron_mode.static * lam_s, static * lam_s, "static", exact
        return neurons.mean(0), bias.mean(0), "experts", exact

    def deployed(self, bn: nn.BatchNorm2d | None = None) -> DeployedMoE:
        """The inference form, computational parameters merged once (`bn` is never given: the layer does not
        fold BatchNorm): [`DeployedMoE.from_layer`][padnet.layers.moe.DeployedMoE.from_layer]."""
        return DeployedMoE.from_layer(self)

    def reset_aux_loss(self) -> None:
        """Forget the load-balancing losses of earlier calls."""
        self.aux_loss = None

    def dynamic_ratio(self) -> float:
        """Fraction of the expert parameters that are dynamic (1.0 for a plain MoE)."""
        if self.mode == "dynamic":
            return 1.0
        modes = (self.neuron_mode, self.bias_mode)
        return sum(m.compact_counts()["dynamic"] for m in modes) / sum(m.factor_numel for m in modes)

    def extra_repr(self) -> str:
        return (
            f"hidden={self.hidden_size}, intermediate={self.intermediate_size}, experts={self.num_experts}, "
            f"top_k={self.top_k}, mode={self.mode!r}, granularity={self.granularity!r}"
        )


class DeployedMoE(nn.Module):
    """Inference form of a [`MoEFeedForward`][padnet.layers.moe.MoEFeedForward]: computational parameters merged once.

    `experts` (E, R, F_d) hold λd · M ⊙ Θᵉ + λs · (1 − M) ⊙ Θ̄ per expert (element masks) or, with
    neuron masks, only the dynamic neurons (λd folded in); the static neurons form `static` (R, F_s),
    one dense FFN run on every token (λs folded in), or None. `expert_bias` (E, H) are the merged output
    biases. Computes what the source layer computes in eval mode (within float rounding).
    """

    folds_batchnorm = False  # the Deployable protocol

    def __init__(
        self,
        router: NoisyTopKRouter | None,
        experts: torch.Tensor,
        expert_bias: torch.Tensor,
        static: torch.Tensor | None,
        activation,
        gated: bool = False,
    ):
        super().__init__()
        self.router, self.activation, self._kind, self.gated = (
            router,
            activation,
            activation_kind(activation),
            gated,
        )
        self.hidden_size = expert_bias.shape[1]

        def frozen(t):
            return None if t is None else nn.Parameter(t.detach().clone().contiguous(), requires_grad=False)

        self.experts, self.expert_bias, self.static = frozen(experts), frozen(expert_bias), frozen(static)

    @classmethod
    @torch.no_grad()
    def from_layer(cls, layer: MoEFeedForward) -> DeployedMoE:
        """Merge `layer`'s computational parameters once ([`computational_parameters`][padnet.layers.moe.MoEFeedForward.computational_parameters],
        PAD-Net eq. 4 per expert); the router and activation are shared with `layer`."""
        return cls(layer.router, *layer.computational_parameters(), layer.activation, layer.gated)

    def deployed(self, bn: nn.BatchNorm2d | None = None) -> DeployedMoE:
        """The layer itself: it is the inference form already (deploying a deployed model changes nothing)."""
        return self

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.router is None:
            raise ConfigError("this deployed MoE layer has no router of its own: call route(x, routing)")
        x = hidden.reshape(-1, self.hidden_size)
        return self.route(x, self.router(x)).reshape(hidden.shape)

    def route(self, x: torch.Tensor, routing: Routing, gate_sums: torch.Tensor | None = None) -> torch.Tensor:
        """As [`MoEFeedForward.route`][padnet.layers.moe.MoEFeedForward.route], with the merged parameters."""
        return _route(
            x,
            routing,
            self.experts,
            self.expert_bias,
            self.static,
            self.activation,
            self._kind,
            self.gated,
            gate_sums,
        )


def reset_aux_losses(model: nn.Module, args=None) -> None:
    """Reset the load-balancing losses of every MoE layer of `model` (a forward pre-hook of converted models:
    each forward starts from zero, and a layer called several times in it adds up every call)."""
    for module in model.modules():
        if isinstance(module, MoEFeedForward):
            module.reset_aux_loss()


def moe_layers(model: nn.Module) -> list[tuple[str, MoEFeedForward]]:
    """Every MoE layer of `model` with its qualified name."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MoEFeedForward)]


def auxiliary_loss(model: nn.Module) -> torch.Tensor | float:
    """Sum of the load-balancing losses of the MoE layers from the last forward pass (0.0 without any)."""
    losses = [m.aux_loss for _, m in moe_layers(model) if m.aux_loss is not None]
    return torch.stack(losses).sum() if losses else 0.0
