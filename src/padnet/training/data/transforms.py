"""Tensor image augmentation without PIL or torchvision.

Batch functions take (B, C, H, W) tensors and draw all randomness from an explicit
`torch.Generator`, so a seeded generator reproduces them exactly. Per-image functions take
(C, H, W) tensors and are used by [`padnet.training.data.folder`][padnet.training.data.folder].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from padnet.errors import ConfigError


def random_crop_pad(x: torch.Tensor, pad: int, generator: torch.Generator | None) -> torch.Tensor:
    """Zero-pad each side by `pad` pixels, then crop every sample back to H x W at a random offset.

    Args:
        x: (B, C, H, W) tensor of any dtype (uint8 pixels in the loaders).
        pad: padding in pixels, >= 0; 0 returns `x` unchanged (no random numbers drawn).
        generator: source of the offsets: one `torch.randint(0, 2*pad+1, (2, B))` call, row 0
            the vertical and row 1 the horizontal offset.

    Returns:
        Tensor of the same shape and dtype as `x`.

    Raises:
        ConfigError: if `pad` is negative or `x` is not 4-D.
    """
    if pad < 0:
        raise ConfigError(f"crop padding must be >= 0, got {pad}")
    if x.dim() != 4:
        raise ConfigError(f"random_crop_pad needs a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if pad == 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(x.device)
    rows = (offsets[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (offsets[1, :, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_hflip(x: torch.Tensor, generator: torch.Generator | None, p: float = 0.5) -> torch.Tensor:
    """Mirror each sample left-right with probability `p`.

    Args:
        x: (B, C, H, W) tensor of any dtype.
        generator: source of one `torch.rand(B)` call; sample i flips when its draw is < `p`.
        p: flip probability in [0, 1].

    Returns:
        Tensor of the same shape and dtype as `x`.
    """
    flip = torch.rand(x.shape[0], generator=generator).to(x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Convert uint8 pixels to float32 `(x / 255 - mean[c]) / std[c]`.

    Args:
        x: uint8 (B, C, H, W) or (C, H, W) tensor, values 0..255 (float input in the same 0..255
            units is accepted too).
        mean: C per-channel means in [0, 1] pixel units.
        std: C per-channel standard deviations in [0, 1] pixel units.

    Returns:
        float32 tensor of the same shape.
    """
    shape = (-1, 1, 1)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).reshape(shape)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).reshape(shape)
    return (x.to(torch.float32) / 255.0 - m) / s


def random_resized_crop(
    img: torch.Tensor,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Crop a random area and aspect ratio of one image and resize it to `size` x `size`.

    The crop covers a fraction of the image area drawn uniformly from `scale` with a
    width/height ratio drawn log-uniformly from `ratio`; up to 10 draws are tried, after which
    the largest centred crop with the ratio clamped into `ratio` is used.

    Args:
        img: (C, H, W) tensor, any real dtype.
        size: output side length in pixels.
        scale: (min, max) fraction of the image area.
        ratio: (min, max) width / height.
        generator: random source; None uses torch's global generator (seeded per DataLoader worker).

    Returns:
        float32 (C, size, size) in the input's units (antialiased bilinear resampling).
    """
    _, h, w = img.shape
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        draws = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * draws[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * draws[1])
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(draws[2] * (h - ch + 1))
            left = int(draws[3] * (w - cw + 1))
            return resize(img[:, top : top + ch, left : left + cw], (size, size))
    aspect = w / h
    if aspect < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif aspect > ratio[1]:
        ch, cw = h, round(h * ratio[1])
    else:
        cw, ch = w, h
    top, left = (h - ch) // 2, (w - cw) // 2
    return resize(img[:, top : top + ch, left : left + cw], (size, size))


def resize(img: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of a (C, H, W) image to `out_hw`; returns float32 (C, h, w)."""
    out = F.interpolate(
        img.to(torch.float32)[None], size=out_hw, mode="bilinear", align_corners=False, antialias=True
    )
    return out[0]


def resize_shorter(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a (C, H, W) image so its shorter side is `size`, keeping the aspect ratio; float32."""
    _, h, w = img.shape
    out_hw = (size, max(1, round(w * size / h))) if h <= w else (max(1, round(h * size / w)), size)
    return resize(img, out_hw)


def center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """The central `size` x `size` window of a (C, H, W) image (H, W >= size)."""
    _, h, w = img.shape
    top, left = (h - size) // 2, (w - size) // 2
    return img[:, top : top + size, left : left + size]
