"""Evaluation protocol (uda.evaluation.inference): whole, slide, flip, multi-scale, errors.

Exactness: the pointwise / symmetric models below use integer weights on integer-valued images,
so every logit is an integer computed exactly in float32 whatever the summation order, and the
tile averages (sums of k equal integers divided by k) are exact too.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uda.evaluation.inference import (predict_labels, predict_probs, scaled_size, slide_inference,
                                      slide_windows, whole_inference)
from uda.models.small import SmallSegNet

C = 5


def _int_images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-4, 5, (b, 3, h, w), generator=g).float()


def _pointwise(seed: int = 0) -> nn.Conv2d:
    """1x1 conv with integer weights: translation-equivariant, no spatial context."""
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(3, C, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.randint(-3, 4, conv.weight.shape, generator=g).float())
        conv.bias.copy_(torch.randint(-3, 4, conv.bias.shape, generator=g).float())
    return conv


def _symmetric_conv() -> nn.Conv2d:
    """3x3 conv (zero padding) whose kernels are mirror-symmetric in x: flip-equivariant."""
    g = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(3, C, 3, padding=1)
    with torch.no_grad():
        k = torch.randint(-2, 3, (C, 3, 3, 2), generator=g).float()
        conv.weight.copy_(torch.cat([k, k[..., :1].flip(-1)], -1))  # columns (a, b, a)
        conv.bias.copy_(torch.randint(-2, 3, (C,), generator=g).float())
    assert torch.equal(conv.weight, conv.weight.flip(-1))
    return conv


def _ramp(w: int) -> torch.Tensor:
    return torch.arange(w, dtype=torch.float32) / w


def _x_model(images: torch.Tensor) -> torch.Tensor:
    """Asymmetric: logits = (image, half its first 2 channels) + a left-to-right ramp on class 0."""
    logits = torch.cat([images, images[:, :2] * 0.5], 1)  # (B, 5, h, w)
    logits[:, 0] += _ramp(images.shape[-1])
    return logits


# ----------------------------------------------------------------------------------------------

def test_whole_equals_upsampled_logits_argmax():
    torch.manual_seed(0)
    net = SmallSegNet(num_classes=19, width=8).eval()
    images = torch.randn(2, 3, 24, 40)
    with torch.no_grad():
        ref_logits = F.interpolate(net(images), size=(48, 80), mode="bilinear", align_corners=False)
    probs = whole_inference(net, images, (48, 80))
    assert probs.shape == (2, 19, 48, 80) and probs.dtype == torch.float32
    torch.testing.assert_close(probs, ref_logits.softmax(1))
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 48, 80))
    labels = predict_labels(net, images, (48, 80))
    assert labels.dtype == torch.int64 and labels.shape == (2, 48, 80)
    assert torch.equal(labels, ref_logits.argmax(1))
    assert torch.equal(predict_probs(net, images, (48, 80)), probs)


@pytest.mark.parametrize("size,crop,stride", [
    ((32, 48), (16, 16), (8, 8)),      # divides
    ((30, 47), (16, 20), (10, 7)),     # does not divide: last tile aligned to the border
    ((30, 47), (16, 20), (16, 20)),    # no overlap
    ((10, 12), (16, 20), (8, 8)),      # image smaller than the crop (padded)
    ((10, 40), (16, 16), (12, 9)),     # smaller on one axis only
])
def test_slide_with_pointwise_model_equals_whole(size, crop, stride):
    model = _pointwise()
    images = _int_images(2, *size)
    with torch.no_grad():
        ref = model(images)
    out = slide_inference(model, images, crop, stride, num_classes=C, tile_batch=3)
    assert out.shape == (2, C, *size) and out.dtype == torch.float32
    assert torch.equal(out, ref)
    probs = predict_probs(model, images, size, mode="slide", crop=crop, stride=stride,
                          num_classes=C)
    assert torch.equal(probs, whole_inference(model, images, size))


@pytest.mark.parametrize("size,crop,stride", [
    ((33, 50), (16, 16), (5, 7)), ((16, 16), (16, 16), (1, 1)), ((7, 70), (8, 32), (8, 3)),
])
def test_slide_count_map_covers_every_pixel(size, crop, stride):
    ones = lambda x: torch.ones(x.shape[0], 2, *x.shape[-2:])  # noqa: E731
    out = slide_inference(ones, torch.zeros(1, 3, *size), crop, stride, num_classes=2)
    assert torch.equal(out, torch.ones(1, 2, *size))
    covered = torch.zeros(size, dtype=torch.int64)
    for y1, y2, x1, x2 in slide_windows(*size, crop, stride):
        assert (y2 - y1, x2 - x1) == (min(crop[0], size[0]), min(crop[1], size[1]))
        covered[y1:y2, x1:x2] += 1
    assert covered.min() >= 1


def test_slide_windows_match_mmseg_grid():
    # Cityscapes 1024x2048 with 512x512 crops, stride 341: 3 rows x 6 columns, last at the border
    boxes = slide_windows(1024, 2048, (512, 512), (341, 341))
    assert len(boxes) == 18
    assert sorted({b[0] for b in boxes}) == [0, 341, 512]
    assert sorted({b[2] for b in boxes}) == [0, 341, 682, 1023, 1364, 1536]
    assert slide_windows(10, 10, (4, 4), (3, 3)) == [
        (y, y + 4, x, x + 4) for y in (0, 3, 6) for x in (0, 3, 6)]


def test_tiles_are_batched_across_images():
    calls = []

    def model(x):
        calls.append(x.shape[0])
        return x[:, :2]

    images = _int_images(3, 20, 20)
    out = slide_inference(model, images, (10, 10), (10, 10), num_classes=2, tile_batch=5)
    assert calls == [5, 5, 2]  # 3 images x 4 tiles, in chunks of 5
    assert torch.equal(out, images[:, :2])


def test_flip_with_mirror_symmetric_model_changes_nothing():
    model = _symmetric_conv()
    images = _int_images(2, 12, 17, seed=3)
    with torch.no_grad():  # exactly flip-equivariant logits (integer arithmetic)
        assert torch.equal(model(images.flip(-1)).flip(-1), model(images))
    plain = predict_probs(model, images, (12, 17), num_classes=C)
    # softmax may round differently by an ulp at mirrored positions (vectorised vs tail lanes)
    flipped = predict_probs(model, images, (12, 17), flip=True, num_classes=C)
    torch.testing.assert_close(flipped, plain, rtol=0, atol=1e-6)
    # slide: x windows [0, 10) and [7, 17) are mirror images of each other, so flip is a no-op too
    kw = dict(mode="slide", crop=(8, 10), stride=(4, 7), num_classes=C)
    slide = predict_probs(model, images, (12, 17), **kw)
    assert not torch.allclose(slide, plain, atol=1e-3)  # tile borders cut the 3x3 context
    torch.testing.assert_close(predict_probs(model, images, (12, 17), flip=True, **kw), slide,
                               rtol=0, atol=1e-6)


def test_flip_pass_is_flipped_back():
    images = torch.rand(2, 3, 6, 9)
    w = images.shape[-1]
    # pass 1: softmax(img + ramp)
    # pass 2: flip(softmax(flip(img) + ramp)) = softmax(img + ramp[::-1])
    base = torch.cat([images, images[:, :2] * 0.5], 1)
    p1 = base.clone()
    p1[:, 0] += _ramp(w)
    p2 = base.clone()
    p2[:, 0] += _ramp(w).flip(0)
    expected = (p1.softmax(1) + p2.softmax(1)) / 2
    out = predict_probs(_x_model, images, (6, 9), flip=True, num_classes=C)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(out, p1.softmax(1), atol=1e-3)  # the flip pass really contributed


def test_multi_scale_is_the_hand_average_of_the_passes():
    torch.manual_seed(0)
    net = SmallSegNet(num_classes=C, width=8).eval()
    images = torch.randn(1, 3, 20, 30)
    out_size = (40, 60)
    single = predict_probs(net, images, out_size, num_classes=C)
    assert torch.equal(predict_probs(net, images, out_size, scales=(1.0,), num_classes=C), single)
    assert scaled_size((20, 30), 0.5) == (10, 15) and scaled_size((5, 3), 0.5) == (3, 2)
    with torch.no_grad():
        small = F.interpolate(images, size=(10, 15), mode="bilinear", align_corners=False)
        half = F.interpolate(net(small), size=out_size, mode="bilinear",
                             align_corners=False).softmax(1)
    expected = (half + single) / 2
    out = predict_probs(net, images, out_size, scales=(0.5, 1.0), num_classes=C)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    labels = predict_labels(net, images, out_size, scales=(0.5, 1.0), num_classes=C)
    assert torch.equal(labels, out.argmax(1))


def test_slide_flip_multiscale_matches_whole_for_pointwise_model():
    model = _pointwise(seed=4)
    images = torch.rand(2, 3, 22, 31)
    kw = dict(flip=True, scales=(0.75, 1.0, 1.5), num_classes=C)
    whole = predict_probs(model, images, (22, 31), **kw)
    slide = predict_probs(model, images, (22, 31), mode="slide", crop=(16, 16), stride=(10, 12),
                          **kw)
    torch.testing.assert_close(slide, whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="sliding"), "mode must be one of"),
    (dict(mode="slide"), "needs crop and stride"),
    (dict(mode="slide", crop=(8, 8)), "needs crop and stride"),
    (dict(mode="slide", crop=(8, 8), stride=(4, 9)), "must not exceed crop"),
    (dict(mode="slide", crop=(0, 8), stride=(4, 4)), "crop must be positive"),
    (dict(scales=(1.0, 0.0)), "scales must be positive"),
    (dict(scales=(-0.5,)), "scales must be positive"),
    (dict(scales=()), "at least one scale"),
    (dict(num_classes=4), "num_classes=4"),
])
def test_argument_errors(kwargs, match):
    images = _int_images(1, 8, 8)
    with pytest.raises(ValueError, match=match):
        predict_probs(_pointwise(), images, (8, 8), **{"num_classes": C, **kwargs})


def test_input_errors():
    model = _pointwise()
    with pytest.raises(ValueError, match=r"\(B,3,H,W\)"):
        whole_inference(model, torch.zeros(3, 8, 8), (8, 8))
    with pytest.raises(ValueError, match="out_size must be positive"):
        predict_labels(model, torch.zeros(1, 3, 8, 8), (0, 8), num_classes=C)
    with pytest.raises(ValueError, match="stride"):
        slide_inference(model, torch.zeros(1, 3, 8, 8), 4, 5, num_classes=C)
    with pytest.raises(ValueError, match="logits"):
        whole_inference(lambda x: x[:, :, ::2], torch.zeros(1, 3, 8, 8), (8, 8))
