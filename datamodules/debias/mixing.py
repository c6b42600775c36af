"""Sample-mixing augmentations as pure tensor functions: Mixup, CutMix, ClassMix (DACS).

Conventions shared by every function here:
- images `x` are float tensors (B,C,H,W) (Mixup also accepts any (B,...) float tensor);
- labels are either class labels (B,) int64 or segmentation masks (B,H,W) int64 whose void
  value is `ignore_index` (255); no function ever creates a label value that is not in its
  inputs (pixels are only *copied* from one mask or the other);
- all randomness comes from the `generator` argument (a `torch.Generator` on the device the
  tensors live on, or on the CPU for CPU tensors): the same generator state gives the same output;
- inputs are never modified in place.

References: Mixup (Zhang et al., ICLR 2018), CutMix (Yun et al., ICCV 2019), ClassMix (Olsson
et al., WACV 2021), DACS (Tranheden et al., WACV 2021; its pseudo-labels are given: the
self-training recipe computes them, uda.losses.pseudo_label).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch

IGNORE_INDEX = 255


def sample_beta(alpha: float, n: int, generator: torch.Generator,
                device: Optional[torch.device] = None) -> torch.Tensor:
    """n draws of Beta(alpha, alpha) as float64 (n,), deterministic given `generator`.

    torch's Beta sampler takes no generator, so one 62-bit seed is drawn from `generator` and
    feeds a numpy Generator. alpha <= 0 means "no mixing": every draw is 1.
    """
    device = device if device is not None else torch.device("cpu")
    if alpha <= 0:
        return torch.ones(n, dtype=torch.float64, device=device)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    lam = np.random.default_rng(seed).beta(alpha, alpha, size=n)
    return torch.from_numpy(lam).to(device)


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B,1,...,1) broadcastable against `like` (B,...)."""
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1)))


def _check_pair(x_a, y_a, x_b, y_b) -> None:
    if x_a.shape != x_b.shape or y_a.shape != y_b.shape:
        raise ValueError(f"mixed pairs must have equal shapes: x {tuple(x_a.shape)} vs "
                         f"{tuple(x_b.shape)}, y {tuple(y_a.shape)} vs {tuple(y_b.shape)}")
    if y_a.shape[0] != x_a.shape[0]:
        raise ValueError(f"batch sizes differ: x {x_a.shape[0]}, y {y_a.shape[0]}")
    if y_a.dim() not in (1, 3):
        raise ValueError(f"labels must be (B,) class labels or (B,H,W) masks, "
                         f"got {tuple(y_a.shape)}")
    if y_a.dim() == 3 and y_a.shape[-2:] != x_a.shape[-2:]:
        raise ValueError(f"mask size {tuple(y_a.shape[-2:])} != image size {tuple(x_a.shape[-2:])}")


# ----------------------------------------------------------------------------- Mixup

def mixup(x_a: torch.Tensor, y_a: torch.Tensor, x_b: torch.Tensor, y_b: torch.Tensor,
          alpha: float, generator: torch.Generator):
    """Mixup: x = lam * x_a + (1 - lam) * x_b with lam ~ Beta(alpha, alpha) per sample.

    x_a, x_b float (B,...) of equal shape; y_a, y_b (B,) or (B,H,W) int64 (returned unchanged:
    the target is the pair of labels, trained with `uda.losses.mixed.mixed_loss`). Returns
    (x (like x_a), y_a, y_b, lam (B,) in [0, 1], dtype of x).
    """
    if x_a.shape != x_b.shape or y_a.shape != y_b.shape or y_a.shape[0] != x_a.shape[0]:
        raise ValueError(f"mixed pairs must have equal shapes: x {tuple(x_a.shape)} vs "
                         f"{tuple(x_b.shape)}, y {tuple(y_a.shape)} vs {tuple(y_b.shape)}")
    lam = sample_beta(alpha, x_a.shape[0], generator, x_a.device).to(x_a.dtype)
    lx = _expand(lam, x_a)
    return lx * x_a + (1 - lx) * x_b, y_a, y_b, lam


# ----------------------------------------------------------------------------- CutMix

def cutmix_boxes(lam: torch.Tensor, height: int, width: int,
                 generator: torch.Generator) -> torch.Tensor:
    """Boxes of area about (1 - lam) * H * W, one per sample, as a bool mask (B,H,W).

    Box side = floor(side * sqrt(1 - lam)), centre uniform over the image, clipped at the
    borders (so the realised area can be smaller: use the mask, not lam, downstream).
    """
    b = lam.shape[0]
    dev = generator.device
    cut = torch.sqrt(1 - lam.to(torch.float64).cpu())
    ch, cw = (height * cut).floor().long(), (width * cut).floor().long()
    cy = torch.randint(0, height, (b,), generator=generator, device=dev).cpu()
    cx = torch.randint(0, width, (b,), generator=generator, device=dev).cpu()
    y1, y2 = (cy - ch // 2).clamp(0, height), (cy + ch - ch // 2).clamp(0, height)
    x1, x2 = (cx - cw // 2).clamp(0, width), (cx + cw - cw // 2).clamp(0, width)
    ys, xs = torch.arange(height).view(1, -1, 1), torch.arange(width).view(1, 1, -1)
    box = ((ys >= y1.view(-1, 1, 1)) & (ys < y2.view(-1, 1, 1))
           & (xs >= x1.view(-1, 1, 1)) & (xs < x2.view(-1, 1, 1)))
    return box.to(lam.device)


def cutmix(x_a: torch.Tensor, y_a: torch.Tensor, x_b: torch.Tensor, y_b: torch.Tensor,
           alpha: float, generator: torch.Generator):
    """CutMix: paste a random box of x_b onto x_a (box area ~ (1 - lam), lam ~ Beta(alpha, alpha)).

    x (B,C,H,W). Masks y (B,H,W): returns (x, y, lam_eff) where y = y_b inside the box and
    y_a outside (a pixelwise label: no soft target needed). Class labels y (B,): returns
    (x, y_a, y_b, lam_eff), to be trained with `uda.losses.mixed.mixed_loss`. lam_eff (B,)
    (dtype of x) is exactly 1 - (box pixels) / (H * W), the fraction of x_a that remains.
    """
    _check_pair(x_a, y_a, x_b, y_b)
    if x_a.dim() != 4:
        raise ValueError(f"cutmix needs images (B,C,H,W), got {tuple(x_a.shape)}")
    h, w = x_a.shape[-2:]
    lam = sample_beta(alpha, x_a.shape[0], generator, x_a.device)
    box = cutmix_boxes(lam, h, w, generator)
    x = torch.where(box.unsqueeze(1), x_b, x_a)
    lam_eff = (1.0 - box.flatten(1).sum(1).to(torch.float64) / (h * w)).to(x_a.dtype)
    if y_a.dim() == 3:
        return x, torch.where(box, y_b, y_a), lam_eff
    return x, y_a, y_b, lam_eff


# ----------------------------------------------------------------------------- ClassMix / DACS

def class_mix_mask(mask: torch.Tensor, generator: torch.Generator,
                   classes: Optional[Union[torch.Tensor, Sequence]] = None,
                   ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """ClassMix selection: bool (B,H,W), True on the pixels of the chosen classes of each mask.

    mask (B,H,W) int64. With classes=None, each image draws ceil(n / 2) of its n present
    classes (ignore_index never counts nor gets selected) uniformly without replacement, as
    DACS does. `classes` fixes the choice instead: one 1-D collection shared by all images, or
    B collections (a list of per-image collections or a (B,K) tensor); ignore_index in it is
    dropped. Classes absent from an image select nothing there.
    """
    if mask.dim() != 3:
        raise ValueError(f"mask must be (B,H,W), got {tuple(mask.shape)}")
    out = torch.zeros_like(mask, dtype=torch.bool)
    if torch.is_tensor(classes):
        per_image_classes = classes.dim() == 2
    else:
        per_image_classes = (classes is not None and len(classes) == mask.shape[0]
                             and all(_is_collection(c) for c in classes))
    for i in range(mask.shape[0]):
        if classes is None:
            present = torch.unique(mask[i])
            present = present[present != ignore_index]
            n = present.numel()
            perm = torch.randperm(n, generator=generator, device=generator.device)
            chosen = present[perm[: (n + 1) // 2].to(present.device)]
        else:
            per_image = classes[i] if per_image_classes else classes
            chosen = torch.as_tensor(per_image, dtype=mask.dtype, device=mask.device).reshape(-1)
            chosen = chosen[chosen != ignore_index]
        out[i] = torch.isin(mask[i], chosen)
    return out


def _is_collection(v) -> bool:
    if torch.is_tensor(v):
        return v.dim() >= 1
    return isinstance(v, (list, tuple, np.ndarray))


def classmix(x_src: torch.Tensor, y_src: torch.Tensor, x_tgt: torch.Tensor,
             y_tgt: torch.Tensor, generator: torch.Generator,
             weight_tgt: Optional[torch.Tensor] = None, ignore_index: int = IGNORE_INDEX):
    """DACS cross-domain ClassMix: paste the source pixels of half its classes onto the target.

    x_src, x_tgt (B,C,H,W) float; y_src (B,H,W) labels; y_tgt (B,H,W) target labels or
    pseudo-labels. weight_tgt: the target's confidence weight, None (= 1), a scalar, (B,) (e.g.
    `pseudo_label`'s per-image fraction) or (B,H,W). Returns
      x (B,C,H,W): x_src where pasted, x_tgt elsewhere;
      y (B,H,W) int64: y_src where pasted, y_tgt elsewhere;
      pixel_weight (B,H,W) float: 1 where pasted, weight_tgt elsewhere.
    The paste mask is `class_mix_mask(y_src, generator)` (same generator state, same mask).
    """
    _check_pair(x_src, y_src, x_tgt, y_tgt)
    if y_src.dim() != 3:
        raise ValueError("classmix needs segmentation masks (B,H,W)")
    m = class_mix_mask(y_src, generator, ignore_index=ignore_index)
    x = torch.where(m.unsqueeze(1), x_src, x_tgt)
    y = torch.where(m, y_src, y_tgt)
    if weight_tgt is None:
        w = torch.ones_like(y, dtype=x.dtype)
    else:
        w = torch.as_tensor(weight_tgt, dtype=x.dtype, device=x.device)
        if w.dim() == 1:
            w = w.view(-1, 1, 1)
        w = w.expand_as(y)
    return x, y, torch.where(m, torch.ones_like(w), w)
