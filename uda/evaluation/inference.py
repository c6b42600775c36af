"""The evaluation protocol as pure functions: whole / sliding-window, flip, multi-scale inference.

`model` is any callable mapping images (B,3,h,w) float -> logits (B,C,h,w) at the size of its
input (e.g. `SmallSegNet`, or a LightningModule's forward). A model whose attribute
`one_step_upsampling` is True (DeepLabV2 in the caffe layout) is asked in `whole` mode for its
logits at `out_size` directly (`model(x, out_size=out_size)`: its stride-8 logits upsampled in
one step with its own align_corners, as the official AdaptSegNet / ADVENT / DACS evaluation); These functions never change the
model's train/eval mode: put it in eval mode first. They run under `torch.no_grad()` (not
`inference_mode`, so the returned tensors stay ordinary tensors) and return float32 tensors on the
device of `images`.

* `whole_inference`: one forward pass at the input size, logits upsampled bilinearly
  (align_corners=False) to `out_size` (or computed there: `one_step_upsampling`), softmax ->
  probabilities. Same protocol as
  `SegmentationModule.predict_labels` before its argmax.
* `slide_inference`: logits at the input resolution from crop-sized tiles, the mmseg `slide`
  protocol: tile origins every `stride` pixels, the last tile of a row / column aligned to the
  border (`y1 = min(y1, H - crop_h)`), overlapping logits summed and divided by a count map.
  Images smaller than the crop are zero-padded at the bottom / right to the crop size and the
  padding is cropped from the output, so every tile has exactly the crop size and tiles of all
  images of the batch go through the model stacked, `tile_batch` tiles per call.
* `predict_probs`: for each scale s the input is resized bilinearly to
  `(max(1, int(h*s + 0.5)), max(1, int(w*s + 0.5)))` (s = 1 -> untouched), run whole or slide,
  logits upsampled to `out_size`, softmax; with `flip=True` the horizontally flipped input is run
  too and its probabilities flipped back. The result is the mean of the probabilities of all
  `len(scales) * (1 + flip)` passes. `predict_labels` is its argmax (int64).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

Model = Callable[[torch.Tensor], torch.Tensor]
MODES = ("whole", "slide")


# ----------------------------------------------------------------------------------------------
# Argument checks and helpers
# ----------------------------------------------------------------------------------------------

def _pair(value, name: str) -> tuple[int, int]:
    """An int or a (h, w) pair of positive ints -> (h, w)."""
    if isinstance(value, int):
        value = (value, value)
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a (height, width) pair, "
                         f"got {value!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive, got {(h, w)}")
    return h, w


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B,3,H,W) tensor, got {shape}")


def _check_logits(logits: torch.Tensor, inputs: torch.Tensor, num_classes: int | None) -> None:
    if logits.ndim != 4 or logits.shape[0] != inputs.shape[0] \
            or logits.shape[-2:] != inputs.shape[-2:]:
        raise ValueError(f"model must map (B,3,h,w) to logits (B,C,h,w); input "
                         f"{tuple(inputs.shape)} gave {tuple(logits.shape)}")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"model returned {logits.shape[1]} channels, num_classes={num_classes}")


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False) of a float tensor; identity when the size matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(h, w) scaled by `scale`, rounded half up, at least 1 pixel."""
    return tuple(max(1, int(v * scale + 0.5)) for v in size)


def slide_windows(height: int, width: int, crop: tuple[int, int],
                  stride: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Tile boxes `(y1, y2, x1, x2)` covering a `height x width` image (mmseg `slide` grid).

    Origins every `stride` pixels; the last tile of each axis ends at the border; tiles are
    clipped to the image when it is smaller than the crop (`slide_inference` pads instead).
    """
    (ch, cw), (sh, sw) = crop, stride
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    boxes = []
    for r in range(rows):
        y2 = min(r * sh + ch, height)
        y1 = max(y2 - ch, 0)
        for c in range(cols):
            x2 = min(c * sw + cw, width)
            x1 = max(x2 - cw, 0)
            boxes.append((y1, y2, x1, x2))
    return boxes


# ----------------------------------------------------------------------------------------------
# Single-pass inference
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def whole_inference(model: Model, images: torch.Tensor, out_size: Sequence[int]) -> torch.Tensor:
    """(B,3,h,w) -> (B,C,H,W) float32 softmax probabilities at `out_size` = (H, W)."""
    _check_images(images)
    return _whole_logits(model, images, _pair(out_size, "out_size"), None).softmax(1)


def _whole_logits(model: Model, x: torch.Tensor, out_size: tuple[int, int],
                  num_classes: int | None) -> torch.Tensor:
    """float32 logits of `x` at `out_size`: from the model itself when it upsamples in one step
    (module docstring), else at the input size, resized."""
    if getattr(model, "one_step_upsampling", False):
        logits = model(x, out_size=out_size)
        if logits.ndim != 4 or logits.shape[0] != x.shape[0] or tuple(logits.shape[-2:]) != out_size:
            raise ValueError(f"model asked for logits at {out_size} returned {tuple(logits.shape)}")
        if num_classes is not None and logits.shape[1] != num_classes:
            raise ValueError(f"model returned {logits.shape[1]} channels, num_classes={num_classes}")
        return logits.float()
    logits = model(x)
    _check_logits(logits, x, num_classes)
    return _resize(logits.float(), out_size)


@torch.no_grad()
def slide_inference(model: Model, images: torch.Tensor, crop: Sequence[int] | int,
                    stride: Sequence[int] | int, num_classes: int,
                    tile_batch: int = 8) -> torch.Tensor:
    """(B,3,h,w) -> (B,num_classes,h,w) float32 logits averaged over overlapping crop tiles.

    `crop`, `stride`: (height, width) or an int; stride <= crop on both axes (no pixel left
    uncovered). `tile_batch`: tiles per model call (tiles of all images are batched together).
    """
    _check_images(images)
    crop = _pair(crop, "crop")
    stride = _pair(stride, "stride")
    if stride[0] > crop[0] or stride[1] > crop[1]:
        raise ValueError(f"stride {stride} must not exceed crop {crop} (pixels would be skipped)")
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if tile_batch <= 0:
        raise ValueError(f"tile_batch must be positive, got {tile_batch}")
    b, _, h, w = images.shape
    ph, pw = max(crop[0] - h, 0), max(crop[1] - w, 0)
    if ph or pw:  # images smaller than the crop: pad bottom / right, crop the output below
        images = F.pad(images, (0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    boxes = slide_windows(hp, wp, crop, stride)
    logits = images.new_zeros((b, num_classes, hp, wp), dtype=torch.float32)
    count = images.new_zeros((1, 1, hp, wp), dtype=torch.float32)
    for y1, y2, x1, x2 in boxes:
        count[..., y1:y2, x1:x2] += 1
    jobs = [(i, box) for i in range(b) for box in boxes]
    for start in range(0, len(jobs), tile_batch):
        chunk = jobs[start:start + tile_batch]
        tiles = torch.stack([images[i, :, y1:y2, x1:x2] for i, (y1, y2, x1, x2) in chunk])
        out = model(tiles)
        _check_logits(out, tiles, num_classes)
        for k, (i, (y1, y2, x1, x2)) in enumerate(chunk):
            logits[i, :, y1:y2, x1:x2] += out[k].float()
        del tiles, out
    assert bool((count > 0).all()), "slide windows left pixels uncovered"
    logits /= count
    return logits[..., :h, :w]


# ----------------------------------------------------------------------------------------------
# Full protocol: scales x flip
# ----------------------------------------------------------------------------------------------

def _check_protocol(mode, crop, stride, scales, num_classes):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "slide":
        if crop is None or stride is None:
            raise ValueError("mode='slide' needs crop and stride, e.g. crop=(512, 512), "
                             "stride=(341, 341)")
        crop, stride = _pair(crop, "crop"), _pair(stride, "stride")
        if stride[0] > crop[0] or stride[1] > crop[1]:
            raise ValueError(f"stride {stride} must not exceed crop {crop} "
                             "(pixels would be skipped)")
    scales = tuple(scales)
    if not scales:
        raise ValueError("scales must contain at least one scale")
    if any(not float(s) > 0 for s in scales):
        raise ValueError(f"scales must be positive, got {scales}")
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    return crop, stride, scales


@torch.no_grad()
def predict_probs(model: Model, images: torch.Tensor, out_size: Sequence[int], mode: str = "whole",
                  crop: Sequence[int] | int | None = None,
                  stride: Sequence[int] | int | None = None, flip: bool = False,
                  scales: Sequence[float] = (1.0,), num_classes: int = 19,
                  tile_batch: int = 8) -> torch.Tensor:
    """(B,3,h,w) -> (B,C,H,W) float32 class probabilities at `out_size`, averaged over passes.

    One pass per scale (and per flip when `flip`): resize input, `whole` or `slide` logits,
    bilinear upsampling to `out_size`, softmax. Only the running sum is kept in memory.
    """
    _check_images(images)
    out_size = _pair(out_size, "out_size")
    crop, stride, scales = _check_protocol(mode, crop, stride, scales, num_classes)
    in_size = tuple(images.shape[-2:])
    total = None
    passes = 0
    for s in scales:
        x = _resize(images.float(), scaled_size(in_size, float(s))) if s != 1 else images
        for flipped in ((False, True) if flip else (False,)):
            xi = x.flip(-1) if flipped else x
            if mode == "whole":
                logits = _whole_logits(model, xi, out_size, num_classes)
            else:
                logits = _resize(slide_inference(model, xi, crop, stride, num_classes,
                                                 tile_batch), out_size)
            probs = logits.softmax(1)
            del logits, xi
            if flipped:
                probs = probs.flip(-1)
            if total is None:
                total = probs
            else:
                total += probs
            del probs
            passes += 1
        del x
    if passes > 1:
        total /= passes
    return total


@torch.no_grad()
def predict_labels(model: Model, images: torch.Tensor, out_size: Sequence[int],
                   mode: str = "whole", crop: Sequence[int] | int | None = None,
                   stride: Sequence[int] | int | None = None, flip: bool = False,
                   scales: Sequence[float] = (1.0,), num_classes: int = 19,
                   tile_batch: int = 8) -> torch.Tensor:
    """(B,3,h,w) -> (B,H,W) int64 class indices: argmax of `predict_probs` (same arguments)."""
    return predict_probs(model, images, out_size, mode=mode, crop=crop, stride=stride, flip=flip,
                         scales=scales, num_classes=num_classes, tile_batch=tile_batch).argmax(1)
