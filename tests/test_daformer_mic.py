"""The daformer and mic recipes' pieces against hand-computed values and the official formulas
(lhoyer/DAFormer mmseg/models/uda/dacs.py, mmseg/utils/utils.py downscale_label_ratio, mmcv's
poly + linear warmup; lhoyer/MIC masking_transforms.py BlockMaskGenerator), and the recipes'
mechanisms (frozen copy, pseudo-label crop in the mixed weights, masked loss targets)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, shrunk_config
from datamodules.labels import CLASS_NAMES
from datamodules.debias.photometric import blur_kernel_size, strong_transform
from uda import build
from uda.config import ConfigError, load_config
from uda.losses import segmentation_ce
from uda.losses.feature_distance import (downscale_label_ratio, masked_feature_distance,
                                         thing_feature_distance, thing_mask)
from uda.losses.masking import block_mask, mask_images
from uda.losses.pseudo_weight import pseudo_weight_map
from uda.methods import THING_CLASSES, OptimConfig
from uda.models import SmallSegNet
from uda.modules.optim import poly_lambda
from uda.modules.daformer import DAFormer
from uda.modules.mic import MIC

torch.set_num_threads(1)
I = 255  # noqa: E741 (ignore)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- feature distance (DAFormer FD)

def test_downscale_label_ratio_by_hand():
    # 4x4 label, 2x2 cells: [[0 0 | 5 5], [0 1 | 5 I]] -> 0 (3/4), 5 (3/4);
    # [[I I | 2 3], [I 7 | 3 4]] -> ignore is the majority (3/4) -> I; 3 covers 2/4 < 0.75 -> I
    y = torch.tensor([[[0, 0, 5, 5],
                       [0, 1, 5, I],
                       [I, I, 2, 3],
                       [I, 7, 3, 4]]])
    out = downscale_label_ratio(y, 2, 0.75, num_classes=19)
    assert out.tolist() == [[[0, 5], [I, I]]]
    # a lower min_ratio keeps the 2/4 majority of the last cell
    assert downscale_label_ratio(y, 2, 0.5, 19).tolist() == [[[0, 5], [I, 3]]]
    assert downscale_label_ratio(y, 4, 0.0, 19).tolist() == [[[I]]]  # 5 ignore of 16: majority


def test_thing_mask_keeps_cells_of_thing_classes():
    # 4x6 label pooled 2x2 to a 2x3 feature grid: cells car(13), road(0), person(11 at 3/4),
    # sky(10), bicycle(18 at 2/4 < 0.75 -> ignore), traffic light(6)
    y = torch.tensor([[[13, 13, 0, 0, 11, 11],
                       [13, 13, 0, 0, 11, 0],
                       [10, 10, 18, 18, 6, 6],
                       [10, 10, 0, 0, 6, 6]]])
    mask = thing_mask(y, (2, 3), THING_CLASSES, 0.75, 19)
    assert mask.tolist() == [[[True, False, True], [False, False, True]]]
    assert THING_CLASSES == (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)


def test_thing_mask_resizes_labels_to_an_unaligned_feature_grid():
    # 8x8 label, features 3x3 (a padded network): scale 8 // 3 = 2, label resized to 6x6
    y = torch.full((1, 8, 8), 13)
    y[:, :, 4:] = 0
    mask = thing_mask(y, (3, 3), THING_CLASSES, 0.75, 19)
    assert mask.shape == (1, 3, 3)
    assert mask[0, :, 0].all() and not mask[0, :, 2].any()


def test_masked_feature_distance_by_hand():
    s = torch.zeros(1, 2, 2, 2)
    f = torch.zeros(1, 2, 2, 2)
    s[0, :, 0, 0] = torch.tensor([3.0, 4.0])   # distance 5
    s[0, :, 0, 1] = torch.tensor([1.0, 0.0])   # distance 1
    s[0, :, 1, 1] = torch.tensor([0.0, 8.0])   # distance 8 (outside the mask)
    mask = torch.tensor([[[True, True], [False, False]]])
    assert masked_feature_distance(s, f, mask).item() == pytest.approx(3.0)   # (5 + 1) / 2
    assert masked_feature_distance(s, f).item() == pytest.approx(14 / 4)      # all 4 cells
    # DAFormer's mean over no cell is NaN; ours 0 with a gradient path
    s.requires_grad_(True)
    empty = masked_feature_distance(s, f, torch.zeros(1, 2, 2, dtype=torch.bool))
    assert empty.item() == 0.0
    empty.backward()
    assert s.grad is not None and torch.equal(s.grad, torch.zeros_like(s))


def test_thing_feature_distance_is_daformers_formula():
    """DAFormer calc_feat_dist: gt pooled by downscale_label_ratio (scale = gt W // feat W), mask
    = pooled in fdist_classes, mean of ||f_s - f_imnet||_2 over the masked cells."""
    g = gen(0)
    y = torch.randint(0, 19, (2, 16, 32), generator=g)
    y[:, :8] = 13                                 # a car region: cells that are surely masked
    fs, fi = torch.randn(2, 5, 4, 8, generator=g), torch.randn(2, 5, 4, 8, generator=g)
    ours = thing_feature_distance(fs, fi, y, THING_CLASSES, 0.75, 19)
    # the official formula, in plain torch
    lab = y.clone()[:, None]
    one_hot = F.one_hot(lab.squeeze(1), 20).permute(0, 3, 1, 2).float()
    ratio, pooled = F.avg_pool2d(one_hot, 4).max(1, keepdim=True)
    pooled[ratio < 0.75] = I
    m = torch.any(pooled[..., None] == torch.tensor(THING_CLASSES), -1)
    ref = torch.norm(fs - fi, dim=1, p=2)[m.squeeze(1)].mean()
    assert m.sum() >= 16
    torch.testing.assert_close(ours, ref)


# ---------------------------------------------------------------- warmup + poly (mmcv linear)

def test_warmup_then_poly_values_by_hand():
    f = poly_lambda(40000, 1.0, warmup_iters=1500, warmup_ratio=1e-6)
    assert f(0) == pytest.approx(1e-6)                                 # ratio x poly(0) = 1e-6
    assert f(750) == pytest.approx((1 - 750 / 40000) * (1 - 0.5 * (1 - 1e-6)))   # 0.4906...
    assert f(750) == pytest.approx(0.490625490625)
    assert f(1500) == pytest.approx(0.9625)                            # warmup over: poly alone
    assert f(20000) == pytest.approx(0.5) and f(40000) == 0.0
    plain = poly_lambda(40000, 0.9)
    assert plain(0) == 1.0 and plain(750) == pytest.approx((1 - 750 / 40000) ** 0.9)


def test_adamw_with_warmup_steps_the_learning_rate(toy_root, tmp_path):
    optim = OptimConfig(name="adamw", lr=6e-5, weight_decay=0.01, poly_power=1.0,
                        warmup_iters=4, warmup_ratio=1e-6)
    module = DAFormer(SmallSegNet(19, 8), CLASS_NAMES, fd_classes=THING_CLASSES, max_steps=10,
                      optim=optim)
    (opt,), (sched,) = module.configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    assert opt.defaults["weight_decay"] == 0.01
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # it = 0..5: warmup factor (1 - (1 - it/4)(1 - 1e-6)) x poly (1 - it/10)
    expect = [6e-5 * (1 - it / 10) * (1 - (1 - it / 4) * (1 - 1e-6)) if it < 4
              else 6e-5 * (1 - it / 10) for it in range(6)]
    assert lrs == pytest.approx(expect, rel=1e-9)
    assert lrs[0] == pytest.approx(6e-11) and lrs[4] == pytest.approx(3.6e-5)


# ---------------------------------------------------------------- pseudo-label crop

def test_pseudo_weight_map_ignores_top_and_bottom_rows():
    w = pseudo_weight_map(torch.tensor([0.5, 0.25]), (6, 3), ignore_top=1, ignore_bottom=2)
    assert w[0].tolist() == [[0.0] * 3, [0.5] * 3, [0.5] * 3, [0.5] * 3, [0.0] * 3, [0.0] * 3]
    assert w[1, 1:4].eq(0.25).all() and w[1, [0, 4, 5]].eq(0).all()
    assert pseudo_weight_map(torch.tensor([0.5]), (4, 2)).eq(0.5).all()  # no crop


def test_toy_and_real_pseudo_crop_and_mask_sizes_follow_the_stated_rule():
    roots = ["data.source.root=/s", "data.target.root=/t", "model.freeze_bn=false"]
    for name in ("daformer", "mic"):
        real = load_config(REPO / f"configs/gta5_cityscapes/{name}.yaml", roots)
        toy = load_config(REPO / f"configs/toy/{name}.yaml", roots)
        r, t = real.method[name], toy.method[name]
        scale = toy.data.target_transform.crop[0] / real.data.target_transform.crop[0]  # 1/8
        assert (r.pseudo_ignore_top, r.pseudo_ignore_bottom) == (15, 120)
        assert (t.pseudo_ignore_top, t.pseudo_ignore_bottom) == (round(15 * scale), 120 * scale)
        assert (real.method.optim.warmup_iters, toy.method.optim.warmup_iters) == (1500, 23)
        assert real.data.debias.rare_class.min_pixels == 3000
        assert toy.data.debias.rare_class.min_pixels == round(3000 * 128 * 256 / (1914 * 1052))
        if name == "mic":
            assert (r.mask_block_size, t.mask_block_size) == (64, 64 * scale)
        # the settings themselves are shared, but for the toy's documented departures (EMA, lr)
        assert (t.ema, toy.method.optim.lr) == (0.99, 3e-3)
        keep = ("threshold", "weight", "pseudo_weight", "fd_lambda", "fd_classes",
                "fd_scale_min_ratio", "strong_aug", "jitter_strength", "jitter_p", "blur_p")
        assert all(r[k] == t[k] for k in keep)
        assert (r.ema, r.pseudo_weight, r.fd_lambda, r.fd_scale_min_ratio) == (
            0.999, "batch", 0.005, 0.75)
        o = real.method.optim
        assert (o.name, o.lr, o.weight_decay, o.poly_power, o.warmup_ratio) == (
            "adamw", 6e-5, 0.01, 1.0, 1e-6)


# ---------------------------------------------------------------- MIC block masks

def test_block_mask_grid_ratio_and_nearest_upsampling_by_hand():
    # 10x12 image, blocks of 4: grid round(2.5) x round(3) = 2 x 3 (Python's round, as MIC's)
    u = torch.rand(1, 1, 2, 3, generator=gen(3))
    keep = (u > 0.5).float()
    mask = block_mask(1, (10, 12), 4, 0.5, gen(3))
    expect = keep.repeat_interleave(5, dim=2).repeat_interleave(4, dim=3)  # rows 0-4 | 5-9
    assert mask.shape == (1, 1, 10, 12) and torch.equal(mask, expect)
    assert block_mask(2, (8, 8), 4, 0.0, gen(0)).eq(1).all()   # ratio 0: nothing masked
    assert block_mask(2, (8, 8), 4, 1.0, gen(0)).eq(0).all()   # ratio 1: everything masked


def test_block_mask_cells_are_kept_when_their_draw_exceeds_the_ratio():
    u = torch.rand(1, 1, 2, 2, generator=gen(0))   # the draws block_mask makes from gen(0)
    mask = block_mask(1, (4, 4), 2, 0.7, gen(0))
    # cell (i, j) kept iff its draw > 0.7; each cell covers a 2x2 block of pixels
    for i in range(2):
        for j in range(2):
            block = mask[0, 0, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
            assert block.eq(float(u[0, 0, i, j] > 0.7)).all()


def test_mask_ratio_is_the_dropped_fraction_and_masked_image_is_image_times_mask():
    m = block_mask(64, (64, 128), 8, 0.7, gen(1))
    assert 0.68 < 1 - m.mean().item() < 0.72                     # 64 x 128 cells drawn
    x = torch.randn(2, 3, 16, 16, generator=gen(2))
    masked, mask = mask_images(x, 4, 0.7, gen(5))
    assert torch.equal(mask, block_mask(2, (16, 16), 4, 0.7, gen(5)))
    assert torch.equal(masked, x * mask)
    assert masked[mask.expand_as(x) == 0].eq(0).all()


# ---------------------------------------------------------------- strong augmentation

def test_blur_kernel_is_the_official_rule():
    # floor(ceil(0.1 s) - 0.5 + ceil(0.1 s) % 2): the largest odd size <= ceil(0.1 s)
    assert [blur_kernel_size(s) for s in (512, 1024, 64, 128, 32, 7)] == [51, 103, 7, 13, 3, 1]


def test_strong_transform_is_seeded_and_off_when_disabled():
    x = torch.rand(3, 3, 32, 40, generator=gen(0))  # blur kernels 3 x 3
    assert torch.equal(strong_transform(x, gen(1), jitter_p=0.0, strength=0.2, blur_p=0.0), x)
    a, b = (strong_transform(x, gen(7), 1.0, 0.2, 0.5) for _ in range(2))
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert a.min() >= 0 and a.max() <= 1 and a.shape == x.shape
    # blur alone (jitter off): a Gaussian blur keeps each channel's mean away from the borders
    seen_blur = False
    for s in range(8):
        y = strong_transform(x, gen(s), 0.0, 0.2, 0.5)
        if not torch.equal(y, x):
            seen_blur = True
            assert (y - x).abs().max() > 0 and y.var() < x.var()
    assert seen_blur


# ---------------------------------------------------------------- the recipes' mechanisms

def test_frozen_copy_is_the_initial_network_and_never_trains(toy_root, tmp_path):
    import pytorch_lightning as pl
    cfg = shrunk_config(toy_root, tmp_path, "daformer", "method.optim.lr=0.01",
                        "method.optim.warmup_iters=0")
    module, dm = build.build_module(cfg), build.build_datamodule(cfg)
    init = {k: v.clone() for k, v in module.segmenter.state_dict().items()}
    assert all(torch.equal(v, module.frozen.net.state_dict()[k]) for k, v in init.items())
    in_optim = {id(p) for p in module.segmenter.parameters()}
    assert not in_optim & {id(p) for p in module.frozen.parameters()}
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         limit_val_batches=0, use_distributed_sampler=False)
    trainer.fit(module, datamodule=dm)
    frozen = module.frozen.net.state_dict()
    assert all(torch.equal(v, frozen[k]) for k, v in init.items())   # buffers too (eval mode)
    assert not module.frozen.net.training
    moved = [k for k, v in module.segmenter.state_dict().items() if not torch.equal(v, init[k])]
    assert moved                                                      # the student trained
    assert any(k.startswith("frozen.net.") for k in module.state_dict())  # resumable


def test_feature_distance_pulls_towards_the_frozen_copy_on_thing_pixels_only():
    net = SmallSegNet(19, 8)
    module = DAFormer(net, CLASS_NAMES, fd_lambda=0.5, fd_classes=THING_CLASSES)
    with torch.no_grad():
        module.segmenter.stage1[0][0].weight.add_(0.1)   # the student has moved
    x = torch.randn(1, 3, 32, 32, generator=gen(0))
    enc = module.segmenter(x, return_features=True)[1]["enc"]
    road = {"image": x, "mask": torch.zeros(1, 32, 32, dtype=torch.long)}
    car = {"image": x, "mask": torch.full((1, 32, 32), 13)}
    assert module.feature_distance(road, enc).item() == 0.0
    frozen = module.frozen.net(x, return_features=True)[1]["enc"]
    expect = 0.5 * torch.linalg.vector_norm(enc - frozen, dim=1).mean()
    torch.testing.assert_close(module.feature_distance(car, enc), expect)
    assert expect > 0
    assert DAFormer(SmallSegNet(19, 8), CLASS_NAMES, fd_lambda=0.0).frozen is None


def recipe_batch(seed=0, b=2, h=32, w=32):
    g = gen(seed)
    return {"source": {"image": torch.randn(b, 3, h, w, generator=g),
                       "mask": torch.randint(0, 19, (b, h, w), generator=g)},
            "target": {"image": torch.randn(b, 3, h, w, generator=g)}, "seed": seed}


def test_mixed_weights_carry_the_pseudo_label_crop_on_target_pixels_only():
    module = DAFormer(SmallSegNet(19, 8), CLASS_NAMES, threshold=0.0, fd_lambda=0.0,
                      ignore_top=3, ignore_bottom=5, strong_aug=None)
    batch = recipe_batch()
    u = torch.rand(2, 1, 32, 32, generator=gen(9)) * 0.1
    batch["source"]["image"] = (0.8 + u - module.mean) / module.std    # RGB in [0.8, 0.9]
    batch["target"]["image"] = (0.2 + u - module.mean) / module.std    # RGB in [0.2, 0.3]
    target = module.pseudo_labelled_target(batch)
    assert target["confidence"].eq(1).all()                 # threshold 0: every pixel confident
    assert target["weight"][:, :3].eq(0).all() and target["weight"][:, -5:].eq(0).all()
    assert target["weight"][:, 3:-5].eq(1).all()
    mixed = module.mix(batch, target, module.generator(batch))
    pasted = module.to_display(mixed["image"]).gt(0.5).all(1)  # source pixels pasted
    assert torch.equal(mixed["weight"], torch.where(pasted, 1.0, target["weight"]))
    assert pasted[:, :3].any() and (~pasted[:, :3]).any()    # both kinds in the cropped rows


def test_mic_masked_loss_trains_against_the_unmasked_pseudo_labels():
    kw = dict(threshold=0.5, fd_lambda=0.0, ignore_top=2, ignore_bottom=4, per_image=False)
    module = MIC(SmallSegNet(19, 8), CLASS_NAMES, block_size=8, ratio=0.7, mic_lambda=0.5,
                 augment=False, **kw)
    batch = recipe_batch(1)
    target = module.pseudo_labelled_target(batch)
    g1, g2 = module.generator(batch), module.generator(batch)
    loss = module.target_losses(batch, target, g1)["masked"]
    masked, mask = mask_images(batch["target"]["image"], 8, 0.7, g2)
    expect = 0.5 * segmentation_ce(module.segmenter(masked), target["labels"],
                                   pixel_weight=target["weight"])
    torch.testing.assert_close(loss, expect)
    assert 0 < mask.mean() < 1
    with torch.no_grad():  # the labels are the teacher's on the unmasked image
        teacher = module.teacher(batch["target"]["image"], module.segmenter).argmax(1)
    assert torch.equal(target["labels"], teacher)


@pytest.mark.parametrize("override,message", [
    ("method.daformer.fd_classes=[6,19]",
     r"method\.daformer\.fd_classes: \[19\] are not class ids"),
    ("method.daformer.pseudo_ignore_bottom=62",
     r"method\.daformer\.pseudo_ignore_top / pseudo_ignore_bottom: rows of the target crop"),
    ("method.daformer.fd_lambda=-1", r"method\.daformer: need fd_lambda >= 0"),
    ("method.optim.warmup_iters=-1", r"method\.optim\.warmup_iters must be >= 0"),
    ("method.optim.warmup_ratio=0", r"method\.optim\.warmup_ratio must be in \(0, 1\]"),
    ("method.optim.name=lamb", r"method\.optim\.name='lamb' is not one of sgd, adam, adamw"),
])
def test_bad_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "configs/toy/daformer.yaml", [override])


def test_bad_mic_settings_are_config_errors():
    with pytest.raises(ConfigError, match=r"method\.mic: need mask_block_size >= 1"):
        load_config(REPO / "configs/toy/mic.yaml", ["method.mic.mask_block_size=0"])
