"""The hrda recipe's pieces against hand-computed values and the official formulas (lhoyer/HRDA
hrda_encoder_decoder.py get_crop_bbox / extract_slide_feat, hrda_head.py forward / decode_hr /
losses, dacs.py's teacher and feature distance), MIC on HRDA, and the configs' stated sizes."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from conftest import REPO, shrunk_config
from datamodules.labels import CLASS_NAMES
from uda import build
from uda.config import ConfigError, load_config
from uda.losses import segmentation_ce
from uda.losses.multires import multires_loss
from uda.models import SmallSegNet
from uda.models.hrda import (HRDASegmenter, crop_box, detail_box, feature_levels, fuse,
                             slide_boxes)
from uda.modules.hrda import HRDA
from uda.modules.mic import MICOnHRDA

torch.set_num_threads(1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def wrapped(attention: bool = True, **kwargs) -> HRDASegmenter:
    torch.manual_seed(0)
    net = HRDASegmenter(SmallSegNet(19, 8), 19, detail_crop=(16, 32), divisible=2,
                        attention=attention, attention_dim=8, **kwargs)
    return net.eval()


# ---------------------------------------------------------------- detail crop geometry

def test_detail_box_is_hrdas_get_crop_bbox():
    # HRDA: 512 of a 1024 crop, divisible 8: offset = randint(0, (512 + 1) // 8 = 64) * 8,
    # so 0, 8, ..., 504 (never 512: randint excludes its bound)
    offsets = set()
    for seed in range(400):
        g, ref = gen(seed), gen(seed)
        y1, y2, x1, x2 = detail_box(1024, 1024, (512, 512), 8, g)
        expect_y = int(torch.randint(64, (1,), generator=ref)) * 8
        expect_x = int(torch.randint(64, (1,), generator=ref)) * 8
        assert (y1, x1) == (expect_y, expect_x)
        assert (y2 - y1, x2 - x1) == (512, 512) and y2 <= 1024 and x2 <= 1024
        offsets.update((y1, x1))
    assert offsets == set(range(0, 505, 8))


def test_detail_box_small_cases_by_hand():
    # 10 x 12 image, 4 x 4 window, divisible 2: margins 6 / 8 -> (7 // 2 = 3) / (9 // 2 = 4)
    # choices: rows 0, 2, 4; columns 0, 2, 4, 6
    rows, cols = set(), set()
    for seed in range(200):
        y1, y2, x1, x2 = detail_box(10, 12, (4, 4), 2, gen(seed))
        rows.add(y1), cols.add(x1)
        assert (y2 - y1, x2 - x1) == (4, 4)
    assert rows == {0, 2, 4} and cols == {0, 2, 4, 6}
    assert detail_box(8, 8, (8, 8), 8, gen(0)) == (0, 8, 0, 8)        # the whole image
    assert detail_box(6, 20, (8, 8), 1, gen(0))[:2] == (0, 6)         # window clipped to 6 rows
    # margin + 1 < divisible: HRDA's randint(0, 0) fails; here the offset is 0
    assert detail_box(10, 10, (5, 5), 8, gen(0)) == (0, 5, 0, 5)


# ---------------------------------------------------------------- fusion

def test_fusion_attention_zero_is_lr_one_is_hr_inside_the_box():
    g = gen(1)
    lr, hr = torch.randn(2, 3, 6, 8, generator=g), torch.randn(2, 3, 3, 4, generator=g)
    box = (2, 5, 4, 8)
    inside = torch.zeros(6, 8, dtype=torch.bool)
    inside[2:5, 4:8] = True
    assert torch.equal(fuse(lr, hr, torch.zeros(2, 3, 6, 8), box), lr)
    one = fuse(lr, hr, torch.ones(2, 3, 6, 8), box)
    assert torch.equal(one[..., 2:5, 4:8], hr)
    assert torch.equal(one[..., ~inside], lr[..., ~inside])
    a = torch.rand(2, 3, 6, 8, generator=g)
    mixed = fuse(lr, hr, a, box)
    assert torch.equal(mixed[..., ~inside], lr[..., ~inside])          # outside: LR alone
    expect = (1 - a[..., 2:5, 4:8]) * lr[..., 2:5, 4:8] + a[..., 2:5, 4:8] * hr
    torch.testing.assert_close(mixed[..., 2:5, 4:8], expect)
    # a class-independent attention (B,1,H,W) broadcasts; a number is a fixed attention
    torch.testing.assert_close(fuse(lr, hr, 0.5, box)[..., 2:5, 4:8],
                               (lr[..., 2:5, 4:8] + hr) / 2)
    # no box (inference): hr covers the image
    full = torch.randn(2, 3, 6, 8, generator=g)
    torch.testing.assert_close(fuse(lr, full, a), (1 - a) * lr + a * full)


def test_fusion_gradient_reaches_hr_only_inside_through_attention():
    lr = torch.zeros(1, 1, 4, 4, requires_grad=True)
    hr = torch.ones(1, 1, 2, 2, requires_grad=True)
    a = torch.full((1, 1, 4, 4), 0.25, requires_grad=True)
    fuse(lr, hr, a, (0, 2, 2, 4)).sum().backward()
    assert torch.equal(hr.grad, torch.full((1, 1, 2, 2), 0.25))
    assert lr.grad[0, 0, :2, 2:].eq(0.75).all() and lr.grad[0, 0, 2:].eq(1).all()
    # d/da = hr - lr = 1 inside, 0 outside (the attention is masked there)
    assert a.grad[0, 0, :2, 2:].eq(1).all() and a.grad.sum() == 4


# ---------------------------------------------------------------- sliding detail inference

def test_slide_boxes_are_hrdas_extract_slide_feat_windows():
    # 6 x 10 image, 4 x 4 window, stride 2 (half the window): h_grids = (6 - 4 + 1) // 2 + 1 = 2,
    # w_grids = (10 - 4 + 1) // 2 + 1 = 4; last windows end at the border
    boxes = slide_boxes(6, 10, (4, 4), (2, 2))
    assert boxes == [(y, y + 4, x, x + 4) for y in (0, 2) for x in (0, 2, 4, 6)]
    # 7 rows: origins 0, 2 then the last ends at 7 (3..7)
    assert [b[:2] for b in slide_boxes(7, 4, (4, 4), (2, 2))] == [(0, 4), (2, 6), (3, 7)]
    count = torch.zeros(6, 10)
    for y1, y2, x1, x2 in boxes:
        count[y1:y2, x1:x2] += 1
    assert count.min() >= 1 and count[0].tolist() == [1, 1, 2, 2, 2, 2, 2, 2, 1, 1]


class TileMean(nn.Module):
    """A 'segmenter' whose logits are each tile's mean colour everywhere in the tile."""

    def forward(self, x, return_features=False):
        return x.mean((2, 3), keepdim=True).expand_as(x).clone()


def test_detail_inference_averages_overlapping_windows_like_hrda():
    x = torch.randn(2, 3, 6, 10, generator=gen(2))
    model = HRDASegmenter.__new__(HRDASegmenter)
    nn.Module.__init__(model)
    model.net, model.detail_crop, model.slide_stride = TileMean(), (4, 4), (2, 2)
    out = model.detail_inference(x)
    # the official decode_hr: padded sums of every window's logits divided by the count map
    preds, count = torch.zeros_like(x), torch.zeros(1, 1, 6, 10)
    for y1, y2, x1, x2 in slide_boxes(6, 10, (4, 4), (2, 2)):
        tile = x[..., y1:y2, x1:x2].mean((2, 3), keepdim=True).expand(-1, -1, 4, 4)
        preds += F.pad(tile, (x1, 10 - x2, y1, 6 - y2))
        count[..., y1:y2, x1:x2] += 1
    torch.testing.assert_close(out, preds / count)
    # pixel (0, 0) lies in one window only, pixel (2, 2) in four
    corner = x[..., 0:4, 0:4].mean((2, 3))
    torch.testing.assert_close(out[..., 0, 0], corner)


def test_inference_is_context_plus_slide_fused_by_the_attention():
    model = wrapped()
    x = torch.randn(2, 3, 32, 64, generator=gen(3))
    with torch.no_grad():
        out = model(x)
        lr = F.interpolate(model.net(F.interpolate(x, scale_factor=0.5, mode="bilinear")),
                           size=(32, 64), mode="bilinear")
        _, feats = model.net(F.interpolate(x, scale_factor=0.5, mode="bilinear"),
                             return_features=True)
        a = torch.sigmoid(F.interpolate(model.attention(feature_levels(feats)), size=(32, 64),
                                        mode="bilinear"))
        hr = model.detail_inference(x)
    assert out.shape == (2, 19, 32, 64) and a.shape == (2, 19, 32, 64)
    torch.testing.assert_close(out, (1 - a) * lr + a * hr)
    # windows of 16 x 32 sliding by 8 x 16: 3 x 3 of them over the 32 x 64 crop
    assert len(slide_boxes(32, 64, model.detail_crop, model.slide_stride)) == 9
    fixed = wrapped(attention=False)
    with torch.no_grad():
        lr_fixed = F.interpolate(fixed.context(x)[0], size=(32, 64), mode="bilinear")
        torch.testing.assert_close(fixed(x), 0.5 * lr_fixed + 0.5 * fixed.detail_inference(x))


def test_training_parts_geometry():
    model = wrapped()
    x = torch.randn(2, 3, 32, 64, generator=gen(4))
    with torch.no_grad():
        out = model.forward_train(x, gen(5))
        box = detail_box(32, 64, (16, 32), 2, gen(5))
        hr = model.net(crop_box(x, box))
    assert out["box"] == box and out["fused"].shape == out["lr"].shape == (2, 19, 32, 64)
    torch.testing.assert_close(out["hr"], hr)
    y1, y2, x1, x2 = box
    outside = torch.ones(32, 64, dtype=torch.bool)
    outside[y1:y2, x1:x2] = False
    assert torch.equal(out["fused"][..., outside], out["lr"][..., outside])
    assert not torch.equal(out["fused"][..., y1:y2, x1:x2], out["lr"][..., y1:y2, x1:x2])
    assert out["features"]["enc"].shape[-2:] == (2, 4)   # the 16 x 32 context at stride 8


def test_attention_head_trains_at_the_networks_highest_rate():
    groups = wrapped().param_groups(1e-3)
    assert [g["lr"] for g in groups] == [1e-3, 1e-3]          # small net: one group, no 10x
    attention = {id(p) for p in wrapped().attention.parameters()}
    assert attention and len(groups[1]["params"]) == len(attention)


@pytest.mark.parametrize("family", ["mit", "dinov2"])
def test_wraps_transformer_segmenters(family):
    """MiT-B0 (its "stages") and a toy DINOv2 ViT (its "levels"): parts, inference, and the
    attention head at the decode head's 10x rate."""
    if family == "mit":
        from uda.models.mit import MiTSegmenter
        net = MiTSegmenter(19, "b0", "daformer", 32)
    else:
        from uda.models.vit import ViTSegmenter
        net = ViTSegmenter(num_classes=19, variant="s", depth=4, dim=48)
    model = HRDASegmenter(net, 19, detail_crop=(32, 32), divisible=2, attention_dim=16)
    x = torch.randn(1, 3, 64, 64, generator=gen(13))
    out = model.forward_train(x, gen(14))
    assert out["fused"].shape == (1, 19, 64, 64) and out["hr"].shape == (1, 19, 32, 32)
    assert model.attention.embed[0].in_channels == feature_levels(out["features"])[0].shape[1]
    groups = model.param_groups(1e-3)
    assert groups[-1]["name"] == "scale_attention" and groups[-1]["lr"] == pytest.approx(1e-2)
    with torch.no_grad():
        assert model.eval()(x).shape == (1, 19, 64, 64)


# ---------------------------------------------------------------- losses

def test_multires_loss_weights_by_hand():
    fused, lr, hr = torch.tensor(2.0), torch.tensor(3.0), torch.tensor(5.0)
    assert multires_loss(fused, None, hr, 0.0, 0.1).item() == pytest.approx(0.9 * 2 + 0.1 * 5)
    assert multires_loss(fused, lr, hr, 0.1, 0.1).item() == pytest.approx(2.4)  # 1.6+.3+.5
    assert multires_loss(fused, None, None, 0.0, 0.0).item() == 2.0
    with pytest.raises(ValueError, match="lambda_lr \\+ lambda_hr <= 1"):
        multires_loss(fused, lr, hr, 0.6, 0.5)
    with pytest.raises(ValueError, match="lambda_hr=0.1 needs the hr loss"):
        multires_loss(fused, lr, None, 0.0, 0.1)


def recipe(**kwargs) -> HRDA:
    module = HRDA(wrapped(), CLASS_NAMES, fd_classes=(13,), max_steps=10, **kwargs)
    return module.eval()


def test_pseudo_ce_is_the_weighted_multires_loss_by_hand():
    module = recipe(lambda_lr=0.2, lambda_hr=0.1)
    g = gen(6)
    x = torch.randn(2, 3, 32, 64, generator=g)
    labels = torch.randint(0, 19, (2, 32, 64), generator=g)
    labels[:, :4] = 255
    weight = torch.rand(2, 32, 64, generator=g)
    loss = module.pseudo_ce(x, labels, weight, gen(7))
    out = module.segmenter.forward_train(x, gen(7))
    box = out["box"]
    expect = (0.7 * segmentation_ce(out["fused"], labels, pixel_weight=weight)
              + 0.2 * segmentation_ce(out["lr"], labels, pixel_weight=weight)
              + 0.1 * segmentation_ce(out["hr"], crop_box(labels, box),
                                      pixel_weight=crop_box(weight, box)))
    torch.testing.assert_close(loss, expect)


def test_source_losses_crop_the_labels_and_use_context_features_for_fd():
    module = recipe()
    g = gen(8)
    src = {"image": torch.randn(2, 3, 32, 64, generator=g),
           "mask": torch.full((2, 32, 64), 13, dtype=torch.long)}
    losses = module.source_losses(src, gen(9))
    out = module.segmenter.forward_train(src["image"], gen(9))
    hr = segmentation_ce(out["hr"], crop_box(src["mask"], out["box"]))
    torch.testing.assert_close(losses["seg"], 0.9 * segmentation_ce(out["fused"], src["mask"])
                               + 0.1 * hr)
    # frozen copy's context features: the downscaled image's encoder features (HRDA
    # feature_scale 0.5), compared on the same grid
    small = F.interpolate(src["image"], scale_factor=0.5, mode="bilinear")
    frozen = module.frozen.net.net(small, return_features=True)[1]["enc"]
    torch.testing.assert_close(module.frozen_features(src["image"]), frozen)
    assert frozen.shape[-2:] == out["features"]["enc"].shape[-2:] == (2, 4)
    # at initialisation the student is the frozen copy: distance 0
    assert losses["fd"].item() == pytest.approx(0.0, abs=1e-6)


def test_teacher_pseudo_labels_are_the_full_inference():
    module = recipe()
    x_t = torch.randn(2, 3, 32, 64, generator=gen(10))
    batch = {"target": {"image": x_t}, "seed": 0}
    target = module.pseudo_labelled_target(batch)
    with torch.no_grad():  # HRDA's generate_pseudo_label: context + sliding detail, fused
        teacher = module.teacher.net(x_t)
    assert torch.equal(target["labels"], teacher.argmax(1))
    assert target["weight"].shape == (2, 32, 64)


# ---------------------------------------------------------------- recipes and configs

def test_mic_on_hrda_trains_through_the_multires_loss(toy_root, tmp_path):
    cfg = shrunk_config(toy_root, tmp_path, "mic_hrda", "method.mic.detail_crop=[16,32]")
    module, dm = build.build_module(cfg), build.build_datamodule(cfg)
    assert isinstance(module, MICOnHRDA) and isinstance(module.segmenter, HRDASegmenter)
    trainer = pl.Trainer(fast_dev_run=1, accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 1 and module.last_results["num_images"] >= 1
    # the masked loss is the host's pseudo_ce (multi-resolution) on the masked image
    module.eval()
    x = torch.randn(2, 3, 32, 64, generator=gen(11))
    labels, weight = torch.randint(0, 19, (2, 32, 64)), torch.ones(2, 32, 64)
    batch = {"target": {"image": x}}
    loss = module.target_losses(batch, {"labels": labels, "weight": weight}, gen(12))["masked"]
    g = gen(12)
    masked = module.masked_target(x, g)
    torch.testing.assert_close(loss, module.pseudo_ce(masked, labels, weight, g))


def test_toy_and_real_hrda_sizes_follow_the_stated_rule():
    roots = ["data.source.root=/s", "data.target.root=/t"]
    for name, key in (("hrda", "hrda"), ("mic_hrda", "mic")):
        real = load_config(REPO / f"configs/gta5_cityscapes/{name}.yaml", roots)
        toy = load_config(REPO / f"configs/toy/{name}.yaml", roots)
        r, t = real.method[key], toy.method[key]
        assert real.method.name == toy.method.name == key
        assert real.data.target_transform.crop == real.data.source_transform.crop == [1024, 1024]
        assert real.data.target_transform.resize == [1024, 2048]
        assert real.data.source_transform.resize == [1440, 2560]
        assert (real.eval.mode, real.eval.crop, real.eval.stride) == ("slide", [1024, 1024],
                                                                      [512, 512])
        assert (real.model.name, real.model.variant, real.model.head) == ("mit", "b5", "daformer")
        assert (r.context_scale, r.detail_crop, r.crop_divisible) == (0.5, [512, 512], 8)
        assert (r.lambda_lr, r.lambda_hr, r.slide_stride, r.attention) == (0.0, 0.1, None, True)
        assert (r.pseudo_ignore_top, r.pseudo_ignore_bottom) == (30, 240)
        scale = toy.data.target_transform.crop[0] / 1024          # 64 rows: 1/16
        assert t.detail_crop == [toy.data.target_transform.crop[0] // 2,
                                 toy.data.target_transform.crop[1] // 2] == [32, 64]
        assert (t.pseudo_ignore_top, t.pseudo_ignore_bottom) == (round(30 * scale), 240 * scale)
        assert t.crop_divisible == 2 and t.context_scale == 0.5 and t.lambda_hr == 0.1
    synthia = load_config(REPO / "configs/synthia_cityscapes/hrda.yaml", roots)
    assert synthia.data.source_transform.resize == [1520, 2560]


@pytest.mark.parametrize("override,message", [
    ("method.hrda.detail_crop=[80,64]",
     r"method\.hrda\.detail_crop=\[80, 64\] must fit in the training crop data\.source_transform"),
    ("method.hrda.context_scale=1.0", r"method\.hrda: need 0 < context_scale < 1"),
    ("method.hrda.slide_stride=[40,8]", r"method\.hrda\.slide_stride: \[h, w\] from 1 to"),
    ("method.hrda.lambda_lr=0.95", r"method\.hrda: need lambda_lr, lambda_hr >= 0 with"),
    ("method.hrda.fd_classes=[19]", r"method\.hrda\.fd_classes: \[19\] are not class ids"),
])
def test_bad_hrda_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "configs/toy/hrda.yaml", [override])


def test_mic_host_hrda_checks_the_hrda_keys_and_daformer_host_ignores_them():
    with pytest.raises(ConfigError, match=r"method\.mic\.detail_crop=\[512, 512\] must fit"):
        load_config(REPO / "configs/toy/mic.yaml", ["method.mic.host=hrda"])
    assert load_config(REPO / "configs/toy/mic.yaml").method.mic.host == "daformer"
    with pytest.raises(ConfigError, match="host"):
        load_config(REPO / "configs/toy/mic.yaml", ["method.mic.host=segformer"])
