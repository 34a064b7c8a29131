"""Data-parallel training over `torch.distributed`, for runs launched by `torchrun`.

Every process builds the same model from the same seed and draws the same global batches; process r trains on
chunk r of each batch and DDP averages the gradients, with BatchNorm statistics taken over all processes. So W
processes reach, up to float rounding, the weights one process reaches with the same global batch. Only
process 0 writes files. Without `torchrun` (`WORLD_SIZE` unset or 1) nothing here does anything.
"""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist
from torch import nn

from padnet.errors import ConfigError, check_choice
from padnet.parallel import Context

DEVICES = ("auto", "cpu", "cuda")


def init(device: str = "auto") -> Context:
    """Join the process group `torchrun` describes (gloo on CPU, NCCL on GPU) and pick this process's device:
    `"auto"` takes GPU `LOCAL_RANK` when CUDA is available, else the CPU.

    Raises:
        ConfigError: an unknown device, or `"cuda"` without a GPU.
    """
    check_choice("device", device, DEVICES)
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no GPU")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    where = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(where)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Context(device=where)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        # leave the group before the interpreter exits: a group torn down by C++ static destructors can abort the
        # process ("terminate called without an active exception", SIGABRT) after its work is done
        atexit.register(_leave)
    return Context(dist.get_rank(), dist.get_world_size(), where)


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class _SumOverProcesses(torch.autograd.Function):
    """Sum over all processes; the gradient of each process's input is the sum of every process's gradient."""

    @staticmethod
    def forward(ctx, tensor):
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad):
        total = grad.clone()
        dist.all_reduce(total)
        return total


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are the mean and variance over every process's batch, on any
    device (`nn.SyncBatchNorm` runs on GPUs only). Gradients flow through the statistics of all processes
    (a differentiable all-reduce). In eval mode it is `nn.BatchNorm2d`.

    The statistics are computed in float32 whatever the input's dtype (a bfloat16 input under `torch.autocast`,
    or a model cast to half precision): bfloat16 sums round the element count and the squared deviations. The
    output has the input's dtype, as `nn.BatchNorm2d`'s under autocast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dtype, x = x.dtype, x.float()
        channels = x.shape[1]
        # two passes (mean, then squared deviations), each a differentiable sum over processes: E[x²] − E[x]²
        # loses the variance of channels whose mean dwarfs their spread
        first = _SumOverProcesses.apply(torch.cat([x.sum((0, 2, 3)), x.new_tensor([x.numel() / channels])]))
        n = first[-1]
        mean = first[:channels] / n
        var = _SumOverProcesses.apply((x - mean[:, None, None]).square().sum((0, 2, 3))) / n
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
            self.running_var.lerp_((var * n / (n - 1).clamp_min(1.0)).to(self.running_var.dtype), momentum)
        scale = self.weight.float() * torch.rsqrt(var + self.eps)
        out = x * scale[:, None, None] + (self.bias.float() - mean * scale)[:, None, None]
        return out.to(dtype)


def global_batchnorm(model: nn.Module, ctx: Context) -> nn.Module:
    """`model` with every BatchNorm2d computing statistics over all processes: `nn.SyncBatchNorm` on GPUs,
    [`GlobalBatchNorm2d`][padnet.training.distributed.GlobalBatchNorm2d] on the CPU (state copied). Unchanged in a single process."""
    if ctx.world_size == 1:
        return model
    if ctx.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.BatchNorm2d:
                if not (child.affine and child.track_running_stats):
                    raise ConfigError(
                        "data-parallel CPU runs need BatchNorm2d with affine parameters and running "
                        "statistics"
                    )
                replacement = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum)
                replacement.load_state_dict(child.state_dict())
                setattr(module, child_name, replacement)
    return model


def data_parallel(model: nn.Module, ctx: Context) -> nn.Module:
    """`model` wrapped in DistributedDataParallel for training steps (the model itself in one process)."""
    if ctx.world_size == 1:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # buffers (masks, BatchNorm statistics) are equal on every process by construction: no broadcast per step
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


# ---------------------------------------------------------------------------------------------- sharding (FSDP2)

# the layers whose blocks become FSDP units when the model names none (Hugging Face's `_no_split_modules`)
