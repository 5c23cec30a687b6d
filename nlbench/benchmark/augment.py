"""Whole-batch augmentation on the device (airbench style): no DataLoader, no per-sample Python."""

from __future__ import annotations

import torch


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random ``pad``-pixel-padded crop back to the input size and a random horizontal flip, per sample.

    ``x`` is ``(B, C, H, W)`` (any dtype); zero padding as in the standard CIFAR recipe. Randomness comes from
    ``generator`` only, which must live on ``x``'s device.
    """
    B, C, H, W = x.shape
    dev = x.device
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (B,), device=dev, generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (B,), device=dev, generator=generator)
    flip = torch.rand(B, device=dev, generator=generator) < 0.5
    cols = torch.arange(W, device=dev)
    cols = torch.where(flip[:, None], W - 1 - cols, cols) + ox[:, None]
    rows = torch.arange(H, device=dev)[None, :] + oy[:, None]
    b = torch.arange(B, device=dev)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last if x.is_cuda else
                                              torch.contiguous_format)
