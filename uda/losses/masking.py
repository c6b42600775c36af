"""MIC's random block masking of images (Hoyer et al. CVPR 2023, Sec. 3.2), as pure functions.

A mask is drawn on a coarse grid of round(H / b) x round(W / b) cells (b = block size): each
cell is kept (1) with probability 1 - ratio, i.e. when its uniform draw exceeds `ratio`
(MIC's BlockMaskGenerator), then upsampled to H x W by nearest neighbour. The masked image is
image * mask: masked pixels become 0, the dataset mean in normalised space.

`patch_block_mask` is the ViT variant (VFM-UDA's token masking at the patch granularity): cells
of block_size pixels (a multiple of the patch size) tiled from the top-left corner, where a ViT's
patch grid starts, so that every patch is wholly kept or wholly masked.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def block_mask(batch: int, size: tuple[int, int], block_size: int, ratio: float,
               generator: torch.Generator, device: torch.device | str | None = None
               ) -> torch.Tensor:
    """(batch, 1, H, W) float mask of 0 (masked) and 1 (kept), deterministic given
    `generator` (on `device`, or on the CPU for CPU tensors)."""
    if block_size < 1 or not 0 <= ratio <= 1:
        raise ValueError(f"need block_size >= 1 and 0 <= ratio <= 1, got {block_size}, {ratio}")
    h, w = size
    grid = (max(1, round(h / block_size)), max(1, round(w / block_size)))
    u = torch.rand(batch, 1, *grid, generator=generator, device=generator.device)
    return F.interpolate((u > ratio).float(), size=(h, w), mode="nearest").to(device or u.device)


def mask_images(images: torch.Tensor, block_size: int, ratio: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked images = images * mask, mask (B,1,H,W)) for images (B,C,H,W)."""
    mask = block_mask(images.shape[0], tuple(images.shape[-2:]), block_size, ratio, generator,
                      images.device).to(images.dtype)
    return images * mask, mask


def patch_block_mask(batch: int, size: tuple[int, int], block_size: int, ratio: float,
                     generator: torch.Generator, device: torch.device | str | None = None
                     ) -> torch.Tensor:
    """(batch, 1, H, W) float mask of 0 (masked) and 1 (kept) on a grid of ceil(H / b) x
    ceil(W / b) cells of exactly b x b pixels (b = block_size) from the top-left corner (the
    last row / column of cells cropped at the image border); each cell is kept when its uniform
    draw exceeds `ratio` (masked with probability `ratio`). With b a multiple of a ViT's patch
    size every patch is wholly kept or wholly masked; b = the patch size masks patch tokens
    independently."""
    if block_size < 1 or not 0 <= ratio <= 1:
        raise ValueError(f"need block_size >= 1 and 0 <= ratio <= 1, got {block_size}, {ratio}")
    h, w = size
    grid = (-(-h // block_size), -(-w // block_size))
    u = torch.rand(batch, 1, *grid, generator=generator, device=generator.device)
    keep = (u > ratio).float().repeat_interleave(block_size, 2).repeat_interleave(block_size, 3)
    return keep[..., :h, :w].to(device or u.device)
