"""Albumentations pipelines for source train, target train and evaluation.

`SegTransform(image, mask, rng)` contract: image HxWx3 uint8 RGB, mask HxW uint8 trainIds or
None, rng a numpy Generator (None = the pipeline's own state) -> (float32 tensor (3,h,w)
normalised, int64 tensor (h,w) or None). Masks are always resized/rescaled with nearest
neighbour and padded with 255 (ignore), so label values stay in {0..18, 255}. Nearest is
cv2's INTER_NEAREST_EXACT (pixel-centre aligned, like PIL): plain INTER_NEAREST is offset by
half a pixel from the bilinear image resize and misaligns masks when downscaling.
Every transform is constructed with `strict=True`: a misspelt or 1.x-style argument (`value=`,
`mask_value=`) raises instead of being silently ignored.
"""
from __future__ import annotations

import random
from typing import Optional, Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from datamodules.labels import IGNORE_INDEX


class SegTransform:
    def __init__(self, ops: list, mean: Sequence[float], std: Sequence[float],
                 transform_mask: bool = True, resize: Optional[Sequence[int]] = None):
        """`transform_mask=False` (evaluation): the image is transformed, the mask is returned
        untouched at its native resolution, where the metric is computed. `resize`: the size
        [h, w] of the pipeline's first op, `resize_op(resize)` (datasets then read the copies
        `uda data prepare` made at that size, which that op leaves unchanged)."""
        self.pipeline = A.Compose(ops, strict=True)
        self.resize = tuple(int(v) for v in resize) if resize is not None else None
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255.0
        self.transform_mask = transform_mask

    def __call__(self, image: np.ndarray, mask: Optional[np.ndarray],
                 rng: Optional[np.random.Generator] = None):
        if rng is not None:
            # One generator shared by all ops: independent draws, reproducible per sample.
            self.pipeline.set_random_state(rng, random.Random(int(rng.integers(2**63))))
        if mask is not None and self.transform_mask:
            out = self.pipeline(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        else:
            image = self.pipeline(image=image)["image"]
        img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
        img = (img - self.mean) / self.std
        mask_t = torch.from_numpy(mask.astype(np.int64)) if mask is not None else None
        return img, mask_t


def build_transform(resize: Optional[Sequence[int]] = None,
                    scale_range: Optional[Sequence[float]] = None,
                    crop: Optional[Sequence[int]] = None, hflip: float = 0.0,
                    jitter: float = 0.0, jitter_p: float = 0.5,
                    mean: Sequence[float] = (0.485, 0.456, 0.406),
                    std: Sequence[float] = (0.229, 0.224, 0.225),
                    transform_mask: bool = True) -> SegTransform:
    """Pipeline: resize -> random rescale -> pad+random crop -> hflip -> colour jitter -> normalise.
    Sizes are (height, width)."""
    ops: list = [resize_op(resize)] if resize is not None else []
    if scale_range is not None:
        lo, hi = float(scale_range[0]), float(scale_range[1])
        ops.append(A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR,
                                 mask_interpolation=cv2.INTER_NEAREST_EXACT, p=1.0))
    if crop is not None:
        h, w = int(crop[0]), int(crop[1])
        ops.append(A.PadIfNeeded(min_height=h, min_width=w, border_mode=cv2.BORDER_CONSTANT,
                                 fill=0, fill_mask=IGNORE_INDEX, position="center"))
        ops.append(A.RandomCrop(h, w))
    if hflip > 0:
        ops.append(A.HorizontalFlip(p=hflip))
    if jitter > 0:
        # Explicit hue: the library default (0.5) would rotate colours arbitrarily.
        ops.append(A.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter,
                                 hue=min(jitter / 4.0, 0.5), p=jitter_p))
    return SegTransform(ops, mean, std, transform_mask=transform_mask, resize=resize)


def resize_op(size: Sequence[int]) -> A.Resize:
    """The fixed resize to [h, w] (bilinear image, nearest-exact mask): the first op of a
    pipeline, and what `uda data prepare` applies to write copies at that size. Albumentations
    returns an image that already has the size unchanged, so a prepared copy goes through the
    pipeline exactly as the original does."""
    return A.Resize(int(size[0]), int(size[1]), interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_NEAREST_EXACT)


def transform_from_config(t, train: bool) -> SegTransform:
    """Build from a `uda.config.TransformConfig`-shaped object (attribute access)."""
    if not train:
        return build_transform(resize=t.resize, mean=t.mean, std=t.std, transform_mask=False)
    return build_transform(resize=t.resize, scale_range=t.scale_range, crop=t.crop,
                           hflip=t.hflip, jitter=t.jitter, jitter_p=t.jitter_p,
                           mean=t.mean, std=t.std)
