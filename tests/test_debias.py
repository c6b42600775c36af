"""datamodules.debias: mixing, pseudo-labels, mean teacher, LfF, SelecMix, rare-class sampling.

Hand-computed expectations are spelled out next to each check. The DDP test forks 2 gloo ranks
that update disjoint samples of `LfFWeights` and compares the merged statistics with a
single-process update over all samples.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from conftest import free_port
from datamodules.debias import (RareClassSampler, class_mix_mask, class_pixel_counts, classmix,
                                cutmix, mixup, rare_class_probabilities, select_contradicting,
                                selecmix)
from uda.losses.lff import LfFWeights, gce_loss
from uda.losses.mixed import mixed_loss
from uda.losses.pseudo_label import pseudo_label
from uda.models.ema_teacher import ema_update_

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def seg_batch(seed: int = 0, b: int = 4, h: int = 12, w: int = 10, classes: int = 6):
    """Images in [0, 1) and masks with `classes` labels plus some 255 pixels."""
    g = gen(seed)
    x = torch.rand(b, 3, h, w, generator=g)
    y = torch.randint(0, classes, (b, h, w), generator=g)
    y[torch.rand(b, h, w, generator=g) < 0.1] = 255
    return x, y


# ----------------------------------------------------------------------------- mixup

@pytest.mark.parametrize("labels", ["class", "mask"])
def test_mixup_convex_combination_and_labels(labels):
    x_a, m_a = seg_batch(0)
    x_b, m_b = seg_batch(1)
    y_a, y_b = (m_a, m_b) if labels == "mask" else (torch.arange(4), torch.arange(4) + 5)
    x, ya, yb, lam = mixup(x_a, y_a, x_b, y_b, 0.4, gen(3))
    assert lam.shape == (4,) and ((lam >= 0) & (lam <= 1)).all()
    assert torch.allclose(x, lam.view(-1, 1, 1, 1) * x_a + (1 - lam.view(-1, 1, 1, 1)) * x_b)
    assert torch.equal(ya, y_a) and torch.equal(yb, y_b)
    again = mixup(x_a, y_a, x_b, y_b, 0.4, gen(3))
    other = mixup(x_a, y_a, x_b, y_b, 0.4, gen(4))
    assert torch.equal(again[0], x) and torch.equal(again[3], lam)
    assert not torch.equal(other[3], lam)


def test_mixed_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    y_a, y_b, lam = torch.tensor([0, 1]), torch.tensor([2, 0]), torch.tensor([0.25, 1.0])
    ce = lambda lg, t: F.cross_entropy(lg, t, reduction="none")  # noqa: E731
    lse0, lse1 = math.log(math.e ** 2 + 1 + math.e ** -1), math.log(2 + math.e)
    ce_a = [lse0 - 2.0, lse1 - 1.0]
    ce_b = [lse0 + 1.0, lse1 - 0.0]
    expect = [0.25 * ce_a[0] + 0.75 * ce_b[0], 1.0 * ce_a[1]]
    out = mixed_loss(ce, logits, y_a, y_b, lam, reduction="none")
    assert torch.allclose(out, torch.tensor(expect), atol=1e-6)
    assert torch.isclose(mixed_loss(ce, logits, y_a, y_b, lam), torch.tensor(sum(expect) / 2))


# ----------------------------------------------------------------------------- cutmix

def _box_of(x, x_a, x_b):
    """Pasted region: x_b values are >= 10, x_a values < 1."""
    box = x[:, 0] >= 10
    assert torch.equal(box.unsqueeze(1).expand_as(x), x >= 10)  # same box in every channel
    return box


def test_cutmix_masks_pixelwise_label_and_lam():
    x_a, y_a = seg_batch(0, b=6)
    x_b, y_b = seg_batch(1, b=6)
    x_b = x_b + 10
    x, y, lam = cutmix(x_a, y_a, x_b, y_b, 1.0, gen(5))
    box = _box_of(x, x_a, x_b)
    h, w = x.shape[-2:]
    # the image is x_b exactly inside the box and x_a outside; the mask likewise
    assert torch.equal(x, torch.where(box.unsqueeze(1), x_b, x_a))
    assert torch.equal(y, torch.where(box, y_b, y_a))
    assert set(y.unique().tolist()) <= set(y_a.unique().tolist()) | set(y_b.unique().tolist())
    # lam_eff = 1 - box fraction, exactly
    frac = box.flatten(1).sum(1).to(torch.float64) / (h * w)
    assert torch.equal(lam, (1 - frac).to(lam.dtype))
    assert ((lam >= 0) & (lam <= 1)).all()
    # each box is a rectangle (rows x cols of the True pixels fill their bounding box)
    for b in box:
        if b.any():
            rows, cols = b.any(1).nonzero().squeeze(1), b.any(0).nonzero().squeeze(1)
            assert b[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
            assert b.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert any(0 < f < 1 for f in frac.tolist())
    # determinism
    same, diff = cutmix(x_a, y_a, x_b, y_b, 1.0, gen(5)), cutmix(x_a, y_a, x_b, y_b, 1.0, gen(6))
    assert torch.equal(same[0], x) and torch.equal(same[1], y)
    assert not torch.equal(diff[0], x)


def test_cutmix_class_labels():
    x_a, _ = seg_batch(0, b=5)
    x_b = seg_batch(1, b=5)[0] + 10
    y_a, y_b = torch.arange(5), torch.arange(5) + 10
    x, ya, yb, lam = cutmix(x_a, y_a, x_b, y_b, 1.0, gen(2))
    box = _box_of(x, x_a, x_b)
    assert torch.equal(ya, y_a) and torch.equal(yb, y_b)
    assert torch.equal(lam, (1 - box.flatten(1).sum(1).double() / box[0].numel()).float())


# ----------------------------------------------------------------------------- classmix

def test_class_mix_mask_half_of_present_classes_never_ignore():
    _, y = seg_batch(0, b=8, classes=7)
    y[0] = 255          # an image with only ignore: nothing selected
    y[1, :, :5] = 3     # an image with classes {3, 4, 255}
    y[1, :, 5:] = 4
    y[1, 0, 0] = 255
    m = class_mix_mask(y, gen(1))
    assert not m[0].any()
    assert not m[y == 255].any()
    for i in range(1, 8):
        present = set(y[i][y[i] != 255].unique().tolist())
        chosen = set(y[i][m[i]].unique().tolist())
        assert chosen <= present and len(chosen) == (len(present) + 1) // 2
        for c in present:  # whole classes: all pixels of a class or none
            assert m[i][y[i] == c].all() == (c in chosen) == m[i][y[i] == c].any()
    assert torch.equal(class_mix_mask(y, gen(1)), m)
    assert not torch.equal(class_mix_mask(y, gen(2)), m)
    # explicit classes (shared, per image); 255 in the list is dropped
    assert torch.equal(class_mix_mask(y, gen(0), classes=[3, 255]), y == 3)
    per = class_mix_mask(y, gen(0), classes=[[1]] * 4 + [[2, 5]] * 4)
    assert torch.equal(per[:4], y[:4] == 1) and torch.equal(per[4:], (y[4:] == 2) | (y[4:] == 5))
    # about half of each class is chosen over many draws
    counts = torch.zeros(7)
    for s in range(200):
        counts += torch.stack([(y[2][class_mix_mask(y[2:3], gen(s))[0]] == c).any()
                               for c in range(7)]).float()
    assert ((counts / 200 - 4 / 7).abs() < 0.15).all()  # 7 classes present -> 4 chosen


def test_classmix_labels_and_weights_follow_the_mask():
    x_s, y_s = seg_batch(0)
    x_t, y_t = seg_batch(1)
    w_t = torch.tensor([0.5, 0.25, 0.0, 1.0])
    x, y, pw = classmix(x_s, y_s, x_t, y_t, gen(7), weight_tgt=w_t)
    m = class_mix_mask(y_s, gen(7))  # same generator state -> same paste mask
    assert m.any() and (~m).any()
    assert torch.equal(x, torch.where(m.unsqueeze(1), x_s, x_t))
    assert torch.equal(y[m], y_s[m]) and torch.equal(y[~m], y_t[~m])
    assert torch.equal(pw, torch.where(m, torch.ones(()), w_t.view(-1, 1, 1).expand_as(m)))
    assert set(y.unique().tolist()) <= set(y_s.unique().tolist()) | set(y_t.unique().tolist())
    assert not (y[m] == 255).any()  # ignore pixels of the source are never pasted
    # no weight -> 1 everywhere; (B,H,W) weight map
    assert torch.equal(classmix(x_s, y_s, x_t, y_t, gen(7))[2], torch.ones_like(pw))
    wmap = torch.rand(y_t.shape, generator=gen(9))
    assert torch.equal(classmix(x_s, y_s, x_t, y_t, gen(7), wmap)[2],
                       torch.where(m, torch.ones(()), wmap))


def test_pseudo_label_by_hand():
    # 2 classes: p(class 1) = sigmoid(d). d = 5 -> 0.9933 (confident), d = 1 -> 0.731,
    # d = -4 -> p(class 0) = 0.982 (confident).
    d = torch.tensor([[[5.0, 1.0], [-4.0, 5.0]],      # image 0: 3 of 4 confident
                      [[1.0, -1.0], [0.5, 3.0]]])     # image 1: none (sigmoid(3) = 0.953)
    logits = torch.stack([torch.zeros_like(d), d], dim=1)  # (2,2,2,2)
    labels, weight = pseudo_label(logits, threshold=0.968)
    assert torch.equal(labels, torch.tensor([[[1, 1], [0, 1]], [[1, 0], [1, 1]]]))
    assert torch.allclose(weight, torch.tensor([0.75, 0.0]))
    _, wb = pseudo_label(logits, 0.968, per_image=False)
    assert torch.allclose(wb, torch.tensor([3 / 8, 3 / 8]))
    lab_c, w_c = pseudo_label(torch.tensor([[0.0, 5.0], [0.0, 1.0]]))
    assert torch.equal(lab_c, torch.tensor([1, 1])) and torch.equal(w_c, torch.tensor([1.0, 0.0]))


def test_ema_update_by_hand():
    def net():
        return nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    t, s = net(), net()
    with torch.no_grad():
        t[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
        t[0].bias.fill_(0.0)
        s[0].weight.copy_(torch.tensor([[3.0, -2.0]]))
        s[0].bias.fill_(1.0)
        s[1].running_mean.fill_(7.0)
        s[1].num_batches_tracked.fill_(4)
    out = ema_update_(t, s, alpha=0.9)
    assert out is t
    # 0.9 * [1, 2] + 0.1 * [3, -2] = [1.2, 1.6]; bias 0.9 * 0 + 0.1 * 1 = 0.1
    assert torch.allclose(t[0].weight, torch.tensor([[1.2, 1.6]]))
    assert torch.allclose(t[0].bias, torch.tensor([0.1]))
    # buffers are the teacher's own (DACS / DAFormer: EMA over parameters only)
    assert t[1].running_mean.item() == 0.0 and t[1].num_batches_tracked.item() == 0
    with pytest.raises(ValueError, match="different parameters"):
        ema_update_(nn.Linear(2, 1), nn.Linear(3, 1), alpha=0.9)
    assert torch.equal(s[0].weight, torch.tensor([[3.0, -2.0]]))  # student untouched


# ----------------------------------------------------------------------------- LfF

def test_gce_loss_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])  # p = [0.25, 0.75], [0.5, 0.5]
    target = torch.tensor([1, 255])
    out = gce_loss(logits, target, q=0.7)
    assert torch.allclose(out, torch.tensor([(1 - 0.75 ** 0.7) / 0.7, 0.0]))  # 0.260566...
    assert abs(out[0].item() - 0.2605660) < 1e-6  # exp(0.7 ln 0.75) = 0.817604
    # q -> 0 approaches CE
    lg = torch.randn(3, 5, 4, 4, generator=gen(0))
    t = torch.randint(0, 5, (3, 4, 4), generator=gen(1))
    t[0, 0, 0] = 255
    ce = F.cross_entropy(lg, t, ignore_index=255, reduction="none")
    small = gce_loss(lg, t, q=1e-6)
    assert small.shape == (3, 4, 4) and small[0, 0, 0] == 0
    assert torch.allclose(small, ce, atol=1e-4)
    assert (gce_loss(lg, t, q=0.7) <= ce + 1e-6).all()  # (1 - p^q) / q <= -log p
    assert torch.allclose(gce_loss(lg, t, q=1.0), (1 - F.softmax(lg, 1).gather(
        1, t.clamp(max=4).unsqueeze(1)).squeeze(1)) * (t != 255))


def test_lff_weights_by_hand():
    lff = LfFWeights(num_samples=4, num_classes=2, ema=0.7)
    idx, lab = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 0, 1, 1])
    # step 1: the first EMA value is the loss itself.
    lff.update(idx, torch.tensor([1.0, 2.0, 4.0, 1.0]), torch.tensor([2.0, 2.0, 1.0, 1.0]), lab)
    # class max: b = [2, 4], d = [2, 1]
    # W0 = (1/2) / (1/2 + 2/2) = 1/3; W1 = 1 / (1 + 1) = 1/2; W2 = 1 / (1 + 1) = 1/2;
    # W3 = (1/4) / (1/4 + 1/1) = 0.2
    assert torch.allclose(lff.weights(idx, lab), torch.tensor([1 / 3, 0.5, 0.5, 0.2]), atol=1e-6)
    # step 2, samples 0 and 3: ema = 0.7 * old + 0.3 * new
    lff.update(torch.tensor([0, 3]), torch.tensor([3.0, 0.0]), torch.tensor([0.0, 2.0]),
               torch.tensor([0, 1]))
    # e_b = [0.7 + 0.9, 2, 4, 0.7] = [1.6, 2, 4, 0.7]; e_d = [1.4, 2, 1, 0.7 + 0.6] = [.., 1.3]
    # max b = [2, 4], max d = [2, 1.3]
    # W0 = 0.8 / (0.8 + 0.7) = 0.53333; W1 = 1 / (1 + 1) = 0.5;
    # W2 = 1 / (1 + 1/1.3) = 0.565217; W3 = 0.175 / (0.175 + 1) = 0.148936
    expect = torch.tensor([0.8 / 1.5, 0.5, 1 / (1 + 1 / 1.3), 0.175 / 1.175])
    assert torch.allclose(lff.weights(idx, lab), expect, atol=1e-6)
    assert torch.allclose(lff.ema_b[:, 0], torch.tensor([1.6, 2.0, 0, 0]))
    # checkpoint round trip
    other = LfFWeights(4, 2)
    other.load_state_dict(lff.state_dict())
    assert torch.equal(other.weights(idx, lab), lff.weights(idx, lab)) and other.ema == 0.7
    with pytest.raises(ValueError):
        LfFWeights(5, 2).load_state_dict(lff.state_dict())
    with pytest.raises(ValueError):
        lff.update(torch.tensor([1, 1]), torch.ones(2), torch.ones(2), torch.tensor([0, 0]))


def test_lff_segmentation_per_image_per_class_by_hand():
    lff = LfFWeights(num_samples=6, num_classes=2)
    idx = torch.tensor([5, 2])
    masks = torch.tensor([[[0, 0], [1, 255]],     # image 5
                          [[1, 1], [0, 0]]])      # image 2
    ce_b = torch.tensor([[[1.0, 3.0], [2.0, 9.0]], [[1.0, 1.0], [8.0, 0.0]]])
    ce_d = torch.tensor([[[1.0, 3.0], [4.0, 9.0]], [[2.0, 2.0], [1.0, 1.0]]])
    lff.update_segmentation(idx, ce_b, ce_d, masks)
    # means: image 5: b = (2, 2), d = (2, 4); image 2: b = (4, 1), d = (1, 2)   [class 0, class 1]
    assert torch.allclose(lff.ema_b[[5, 2]], torch.tensor([[2.0, 2.0], [4.0, 1.0]]))
    assert torch.allclose(lff.ema_d[[5, 2]], torch.tensor([[2.0, 4.0], [1.0, 2.0]]))
    # class max: b = (4, 2), d = (2, 4)
    # W(5,0) = (2/4) / (1/2 + 2/2) = 1/3; W(5,1) = (2/2) / (1 + 4/4) = 1/2
    # W(2,0) = (4/4) / (1 + 1/2) = 2/3;   W(2,1) = (1/2) / (1/2 + 2/4) = 1/2
    pw = lff.pixel_weights(idx, masks)
    expect = torch.tensor([[[1 / 3, 1 / 3], [0.5, 0.0]], [[0.5, 0.5], [2 / 3, 2 / 3]]])
    assert torch.allclose(pw, expect, atol=1e-6)


# ----------------------------------------------------------------------------- SelecMix

# bias = a 2-D direction: bias 0 near 0 degrees, bias 1 near 90 degrees. Samples 2 and 5 are
# bias-conflicting. Magnitudes differ on purpose: only the direction (cosine) matters.
ANGLES = [0.0, 5.0, 85.0, 90.0, 78.0, 10.0]
LABELS = torch.tensor([0, 0, 0, 1, 1, 1])
BIAS = torch.tensor([0, 0, 1, 1, 1, 0])


def _features():
    a = torch.deg2rad(torch.tensor(ANGLES))
    scale = torch.tensor([1.0, 3.0, 0.5, 2.0, 1.0, 4.0]).view(-1, 1)
    return torch.stack([a.cos(), a.sin()], 1) * scale


def test_select_contradicting_on_constructed_features():
    f = _features()
    same = select_contradicting(f, LABELS, gen(0), mode="same_label_diff_bias")
    # least similar with the same label: 0 -> 2 (85 deg), 1 -> 2 (80), 2 -> 0 (85),
    # 3 -> 5 (80), 4 -> 5 (68), 5 -> 3 (80)
    assert same.tolist() == [2, 2, 0, 5, 5, 3]
    assert (LABELS[same] == LABELS).all() and (BIAS[same] != BIAS).all()
    diff = select_contradicting(f, LABELS, gen(0), mode="diff_label_same_bias")
    # most similar with another label: 0 -> 5 (10 deg), 1 -> 5 (5), 2 -> 3 (5), 3 -> 2 (5),
    # 4 -> 2 (7), 5 -> 1 (5)
    assert diff.tolist() == [5, 5, 3, 2, 2, 1]
    assert (LABELS[diff] != LABELS).all() and (BIAS[diff] == BIAS).all()
    # auto: each anchor gets one of the two, both kinds occur, deterministic per seed
    autos = [select_contradicting(f, LABELS, gen(s)) for s in range(20)]
    for a in autos:
        assert ((a == same) | (a == diff)).all()
    stacked = torch.stack(autos)
    assert ((stacked == same).any(0) & (stacked == diff).any(0)).all()
    assert torch.equal(select_contradicting(f, LABELS, gen(3)), autos[3])
    # no candidate -> a random OTHER sample
    one_label = torch.zeros(6, dtype=torch.long)
    fb = [select_contradicting(f, one_label, gen(s), mode="diff_label_same_bias")
          for s in range(10)]
    assert all((p != torch.arange(6)).all() for p in fb)
    assert len({tuple(p.tolist()) for p in fb}) > 1


def test_selecmix_mixes_with_partners():
    f = _features()
    x = torch.rand(6, 3, 4, 4, generator=gen(0))
    xm, ya, yb, lam = selecmix(x, LABELS, f, 1.0, gen(1), lam_max=0.5)
    partner = select_contradicting(f, LABELS, gen(1))  # drawn first from the same generator
    assert torch.equal(ya, LABELS) and torch.equal(yb, LABELS[partner])
    assert ((lam >= 0) & (lam <= 0.5)).all()
    assert torch.allclose(xm, lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[partner])
    again = selecmix(x, LABELS, f, 1.0, gen(1), lam_max=0.5)
    assert torch.equal(again[0], xm)
    assert not torch.equal(selecmix(x, LABELS, f, 1.0, gen(2))[3], lam)


# ----------------------------------------------------------------------------- rare-class sampling

def test_rare_class_probabilities_by_hand():
    counts = torch.tensor([[6, 2, 0], [2, 0, 0], [0, 0, 0]])
    # f = [8, 2, 0] / 10; class 2 never occurs -> 0; T = 0.1: logits (1 - f) / T = [2, 8]
    p = rare_class_probabilities(counts, temperature=0.1)
    z = math.exp(2) + math.exp(8)
    expect = torch.tensor([math.exp(2) / z, math.exp(8) / z, 0.0], dtype=torch.float64)
    assert torch.allclose(p, expect)
    # min_pixels excludes classes without any image above it: class 1 has 2 pixels at most
    assert torch.allclose(rare_class_probabilities(counts, 0.1, min_pixels=2),
                          torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    # pixel counts from masks (255 skipped)
    m = torch.tensor([[[0, 1], [1, 255]], [[2, 2], [2, 2]]])
    assert torch.equal(class_pixel_counts(m, 3), torch.tensor([[1, 2, 0], [0, 0, 4]]))


def test_rare_class_sampler_deterministic_and_valid():
    counts = torch.tensor([[100, 0, 0], [90, 5, 0], [80, 0, 3], [100, 0, 0]])
    s = RareClassSampler(counts, temperature=0.5, num_samples=400, seed=1)
    first = list(s)
    assert first == list(RareClassSampler(counts, temperature=0.5, num_samples=400, seed=1))
    assert first != list(RareClassSampler(counts, temperature=0.5, num_samples=400, seed=2))
    s.set_epoch(1)
    assert list(s) != first
    idx, cls = s.draw(3000, gen(0))
    assert (counts[idx, cls] > 0).all()  # the image contains the sampled class
    freq = torch.bincount(cls, minlength=3).double() / 3000
    assert (freq - s.probs).abs().max() < 0.03
    # ranks take disjoint positions of one stream
    r = [list(RareClassSampler(counts, 0.5, num_samples=10, seed=1, rank=k, world_size=2))
         for k in range(2)]
    full = RareClassSampler(counts, 0.5, num_samples=20, seed=1)  # the global stream
    assert [v for pair in zip(r[0], r[1]) for v in pair] == list(full)
    assert len(s) == 400


# ----------------------------------------------------------------------------- DDP

WORLD = 2
N, C = 8, 3


def _lff_steps(rank):
    """Two classification steps and one segmentation step; rank None = every sample."""
    lff = LfFWeights(N, C)
    g = gen(11)
    for _ in range(2):
        idx = torch.randperm(N, generator=g)
        lab = torch.arange(N) % C  # the label of sample i
        lb, ld = torch.rand(N, generator=g), torch.rand(N, generator=g)
        keep = slice(None) if rank is None else (idx % WORLD == rank)
        lff.update(idx[keep], lb[keep], ld[keep], lab[idx][keep])
    idx = torch.tensor([0, 3, 4, 7])
    masks = torch.randint(0, C, (4, 3, 3), generator=g)
    cb, cd = torch.rand(4, 3, 3, generator=g), torch.rand(4, 3, 3, generator=g)
    keep = slice(None) if rank is None else (idx % WORLD == rank)
    lff.update_segmentation(idx[keep], cb[keep], cd[keep], masks[keep])
    return lff


def _ddp_worker(rank: int, port: int, out: Path) -> None:
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=WORLD, timeout=timedelta(seconds=60))
        lff = _lff_steps(rank)
        before = lff.state_dict()
        lff.all_reduce_()
        torch.save({"before": before, "after": lff.state_dict(),
                    "w": lff.weights(torch.arange(N), torch.arange(N) % C)}, out / f"rank{rank}.pt")
        dist.destroy_process_group()
    except BaseException:
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        raise SystemExit(1)




@pytest.mark.ddp
def test_lff_all_reduce_two_ranks(tmp_path):
    ctx = mp.get_context("fork")
    port = free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(r, port, tmp_path)) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    errors = [f.read_text() for f in tmp_path.glob("*.err")]
    assert not errors, "\n".join(errors)
    assert all(p.exitcode == 0 for p in procs)
    res = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    ref = _lff_steps(None).state_dict()
    # before the merge the ranks differ (each holds its own samples only)
    assert not torch.equal(res[0]["before"]["ema_b"], res[1]["before"]["ema_b"])
    for key in ("ema_b", "ema_d", "updated"):
        assert torch.equal(res[0]["after"][key], res[1]["after"][key]), key
        assert torch.equal(res[0]["after"][key], ref[key]), key
    assert not res[0]["after"]["dirty"].any()
    assert torch.equal(res[0]["w"], res[1]["w"])


# ----------------------------------------------------------------------------- benchmark script

def test_bench_debias_digits_quick(tmp_path):
    out = tmp_path / "res.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_debias_digits.py"),
                           "--quick", "--output", str(out)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res) == {"vanilla", "lff", "selecmix"}
    for m in res.values():
        assert set(m) == {"0.02", "0.05", "0.10"}
        assert all(0.0 <= v <= 100.0 for v in m.values())
    assert "Unbiased test accuracy" in proc.stdout
