"""Debiasing wired into training: batch mixers of `DebiasPipeline`, the module's losses and
callables, LfF statistics in the datamodule (preview, callback commit, checkpoint state, 2 DDP
ranks), rare-class sampling in the train sampler, and every option through real training."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from conftest import CROPS, REPO, shrink, shrunk_config
from uda.losses.lff import LfFWeights
from uda.losses.mixed import mixed_loss
from datamodules.debias.pipeline import (ClassMix, CutMix, DebiasPipeline, Mixup, SelecMix,
                                         StyleSwap, partner_permutation)
from datamodules.samplers import UDATrainSampler
from datamodules.debias.sampling import RareClassSampler
from uda import build
from uda.config import ConfigError
from uda.models.dranet import DRANetTranslator
from uda.modules.base import SegmentationModule
from uda.modules.self_training import SelfTraining

torch.set_num_threads(1)
B, H, W, C = 4, 8, 10, 5


def coded_batch(seed=0):
    """Source images whose every pixel encodes its label (channel 0 = label / 10, 255 -> -1) and
    its image (channel 1 = image index): mixing that keeps labels consistent keeps
    image == code(mask)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (B, H, W), generator=g)
    y[:, 0, :2] = 255
    x = torch.zeros(B, 3, H, W)
    x[:, 0] = torch.where(y == 255, torch.full_like(y, -10), y).float() / 10
    x[:, 1] = torch.arange(B).view(-1, 1, 1).float()
    x[:, 2] = torch.rand(B, H, W, generator=g)
    tgt = torch.rand(B, 3, H, W, generator=g) + 5.0  # target pixels are recognisable (> 4)
    return {"source": {"image": x, "mask": y, "index": torch.arange(B) + 10},
            "target": {"image": tgt, "index": torch.arange(B)}}


def label_of(x):
    code = (x[:, 0] * 10).round().long()
    return torch.where(code < 0, torch.full_like(code, 255), code)


@pytest.mark.parametrize("mixer", [CutMix(p=1.0), ClassMix(p=1.0), CutMix(p=0.5), ClassMix(p=0.5)])
def test_pasting_mixers_keep_labels_on_their_pixels(mixer):
    pasted = 0
    for seed in range(5):
        batch = coded_batch(seed)
        out = DebiasPipeline([mixer]).apply(batch, seed=seed)
        x, y = out["source"]["image"], out["source"]["mask"]
        assert torch.equal(label_of(x), y)  # every pixel's label came with its pixel
        pasted += int((x[:, 1] != torch.arange(B).view(-1, 1, 1)).sum())  # from another image
        assert set(y.unique().tolist()) <= set(batch["source"]["mask"].unique().tolist())
        assert batch["source"]["image"][:, 1, 0, 0].tolist() == list(range(B))  # input intact
    assert pasted > 0


def test_mixers_are_deterministic_from_the_seed_and_p0_is_identity():
    mixers = [CutMix(p=0.7), ClassMix(p=0.7), Mixup(p=0.7)]
    a = DebiasPipeline(mixers).apply(coded_batch(), seed=5)
    b = DebiasPipeline(mixers).apply(coded_batch(), seed=5)
    c = DebiasPipeline(mixers).apply(coded_batch(), seed=6)
    for k in ("image", "mask", "mask_b", "lam"):
        assert torch.equal(a["source"][k], b["source"][k])
    assert not torch.equal(a["source"]["image"], c["source"]["image"])
    off = DebiasPipeline([CutMix(p=0.0), ClassMix(p=0.0), Mixup(p=0.0)]).apply(coded_batch(), 5)
    assert torch.equal(off["source"]["image"], coded_batch()["source"]["image"])
    assert torch.equal(off["source"]["lam"], torch.ones(B))


def test_partner_permutation_never_pairs_an_image_with_itself():
    for seed in range(20):
        perm = partner_permutation(5, torch.Generator().manual_seed(seed), "cpu")
        assert sorted(perm.tolist()) == list(range(5)) and (perm != torch.arange(5)).all()


def test_mixup_blend_and_label_pair():
    batch = coded_batch()
    out = DebiasPipeline([Mixup(p=1.0, alpha=0.4)]).apply(batch, seed=1)
    s = out["source"]
    lam = s["lam"]
    assert lam.shape == (B,) and ((lam >= 0) & (lam <= 1)).all()
    partner = s["image"][:, 1, 0, 0].sub(lam * torch.arange(B)).div(1 - lam).round().long()
    x0 = batch["source"]["image"]
    expect = lam.view(-1, 1, 1, 1) * x0 + (1 - lam.view(-1, 1, 1, 1)) * x0[partner]
    assert torch.allclose(s["image"], expect, atol=1e-5)
    assert torch.equal(s["mask_b"], batch["source"]["mask"][partner])
    assert torch.equal(s["mask"], batch["source"]["mask"])


def test_selecmix_takes_the_least_similar_bias_and_caps_lam():
    batch = coded_batch()
    # biased features: images 0,1 share one bias, 2,3 another -> partners across the groups;
    # least cosine-similar: 0 -> 2 (0), 1 -> 2 (0.11 < 0.22), 2 -> 0 (0), 3 -> 0 (0.11 < 0.22)
    feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    pipe = DebiasPipeline([SelecMix(p=1.0, alpha=1.0, lam_max=0.5)])
    pipe.register(bias_features=lambda x: feats)
    s = pipe.apply(batch, seed=0)["source"]
    assert (s["lam"] <= 0.5).all() and (s["lam"] >= 0).all()
    y = batch["source"]["mask"]
    assert torch.equal(s["mask_b"], y[torch.tensor([2, 2, 0, 0])])


class FixedLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


def test_self_training_mixed_mask_is_the_source_mask_where_pasted():
    batch = {**coded_batch(), "seed": 2}
    teacher_logits = torch.zeros(B, C, H, W)
    teacher_logits[:, 3] = 10.0  # confident class 3 everywhere
    teacher_logits[0, :, :, :5] = 0.0  # image 0: half the pixels unconfident
    module = SelfTraining(torch.nn.Conv2d(3, C, 1), list("abcde"), threshold=0.9)
    module.teacher.net = FixedLogits(teacher_logits)
    m = module.mixed_batch(batch)
    pasted = m["image"][:, 0] < 4  # target pixels are > 4
    assert pasted.any() and (~pasted).any()
    assert torch.equal(m["mask"][pasted], batch["source"]["mask"][pasted])
    assert torch.equal(label_of(m["image"])[pasted], m["mask"][pasted])
    pseudo = teacher_logits.argmax(1)  # 3, or 0 where the logits are flat
    assert torch.equal(m["mask"][~pasted], pseudo[~pasted])
    assert (m["weight"][pasted] == 1).all()
    # target weight = the image's fraction of confident pixels: 0.5 for image 0, 1 otherwise
    assert torch.allclose(m["weight"][0][~pasted[0]], torch.tensor(0.5))
    assert (m["weight"][1:][~pasted[1:]] == 1).all()


def test_missing_callable_is_named():
    pipe = DebiasPipeline([SelecMix()])
    with pytest.raises(RuntimeError, match="bias_features"):
        pipe.apply(coded_batch(), seed=0)


def test_style_swap_changes_only_chosen_images_and_keeps_masks():
    batch = coded_batch()
    calls = {}

    def codec(x, x_style, alpha, donor):
        calls.update(n=x.shape[0], alpha=alpha, donor=donor)
        return x_style  # "full swap"
    pipe = DebiasPipeline([StyleSwap(p=0.5, donor="target", alpha_range=(0.25, 0.75))])
    pipe.register(style_codec=codec)
    s = pipe.apply(batch, seed=4)["source"]
    changed = (s["image"] != batch["source"]["image"]).flatten(1).any(1)
    assert changed.sum() == calls["n"] and calls["donor"] == "target"
    assert ((calls["alpha"] >= 0.25) & (calls["alpha"] <= 0.75)).all()
    assert (s["image"][changed] > 4).all()  # donors came from the target batch
    assert torch.equal(s["mask"], batch["source"]["mask"])


def test_style_codec_keeps_content_and_moves_style():
    torch.manual_seed(0)
    tr = DRANetTranslator(width=8, num_down=2).eval()
    module = SegmentationModule(torch.nn.Conv2d(3, C, 1), [str(i) for i in range(C)])
    module.set_style_codec(tr)
    x, x_style = torch.randn(2, 3, 16, 20), torch.randn(2, 3, 16, 20)
    unit = lambda v: (v * module.std + module.mean) * 2 - 1  # noqa: E731
    back = lambda u: (((u + 1) / 2).clamp(0, 1) - module.mean) / module.std  # noqa: E731
    with torch.no_grad():
        c, s_own = tr.encode(unit(x), "source")
        _, s_t = tr.encode(unit(x_style), "target")
        rec = back(tr.decode(c, s_own))
        full = back(tr.decode(c, s_t))
        half = back(tr.decode(c, 0.5 * s_t + 0.5 * s_own))
        got = module.style_codec(x, x_style, torch.tensor([0.0, 1.0]), "target")
        got_half = module.style_codec(x, x_style, torch.tensor([0.5, 0.5]), "target")
        odd = module.style_codec(x[..., :15, :18], x_style[..., :15, :18], torch.ones(2), "target")
    assert torch.allclose(got[0], rec[0], atol=1e-5) and torch.allclose(got[1], full[1], atol=1e-5)
    assert torch.allclose(got_half, half, atol=1e-5)
    assert odd.shape == (2, 3, 15, 18)  # sizes not divisible by 4 are padded and cropped


def test_lff_preview_equals_update_then_weights_and_does_not_write():
    stats = LfFWeights(20, C, ema=0.7)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, C, (B, H, W), generator=g)
    idx = torch.tensor([3, 7, 11, 19])
    first_b, first_d = torch.rand(B, H, W, generator=g), torch.rand(B, H, W, generator=g)
    stats.update_segmentation(idx, first_b, first_d, y)
    before = stats.state_dict()
    ce_b, ce_d = torch.rand(B, H, W, generator=g), torch.rand(B, H, W, generator=g)
    w = stats.preview_pixel_weights(idx, ce_b, ce_d, y)
    for k in ("ema_b", "ema_d", "updated"):
        assert torch.equal(stats.state_dict()[k], before[k])
    stats.update_segmentation(idx, ce_b, ce_d, y)
    assert torch.allclose(w, stats.pixel_weights(idx, y))
    # by hand for one pixel: EMAs 0.7 * first + 0.3 * now of the (image, class) means
    c = int(y[0, 0, 0])  # pixel (0, 0) of image 0
    sel = y[0] == c
    eb = 0.7 * first_b[0][sel].mean() + 0.3 * ce_b[0][sel].mean()
    ed = 0.7 * first_d[0][sel].mean() + 0.3 * ce_d[0][sel].mean()
    max_b, max_d = stats.class_max()
    nb, nd = eb / max_b[c], ed / max_d[c]
    assert torch.allclose(w[0, 0, 0], nb / (nb + nd + 1e-8), atol=1e-6)


def test_lff_preview_is_bit_identical_to_a_preview_on_a_copy():
    """The preview writes the batch's entries in place and puts them back: the weights equal
    those of the same update on a deep copy (the former implementation), bit for bit, also
    when the batch lowers a column's maximum; every table (dirty flags too) is unchanged."""
    import copy
    stats = LfFWeights(20, C, ema=0.7)
    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, C, (B, H, W), generator=g)
    idx = torch.tensor([0, 5, 9, 13])
    stats.update_segmentation(idx, 10 * torch.rand(B, H, W, generator=g),
                              torch.rand(B, H, W, generator=g), y)  # large CE_b: the maxima
    stats.all_reduce_()  # (no DDP) leaves dirty set
    before = {k: v.clone() if torch.is_tensor(v) else v for k, v in stats.state_dict().items()}
    ce_b, ce_d = 0.01 * torch.rand(B, H, W, generator=g), torch.rand(B, H, W, generator=g)
    reference = copy.deepcopy(stats)
    reference.update_segmentation(idx, ce_b, ce_d, y)
    assert not torch.equal(reference.class_max()[0], stats.class_max()[0])  # maxima lowered
    got = stats.preview_pixel_weights(idx, ce_b, ce_d, y)
    assert torch.equal(got, reference.pixel_weights(idx, y))
    after = stats.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in ("ema_b", "ema_d", "updated", "dirty"))


def test_source_loss_mixed_pairs_and_lff_weights(toy_root, tmp_path):
    module = SegmentationModule(torch.nn.Conv2d(3, C, 1), [str(i) for i in range(C)])
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(B, C, H, W, generator=g)
    y, y_b = torch.randint(0, C, (B, H, W), generator=g), torch.randint(0, C, (B, H, W), generator=g)
    y[:, 0] = 255
    y_b[:, 0] = 255
    lam = torch.tensor([1.0, 0.5, 0.2, 0.0])
    got = module.source_loss(logits, {"mask": y, "mask_b": y_b, "lam": lam})
    ce = lambda lg, t: F.cross_entropy(lg, t, ignore_index=255, reduction="none")  # noqa: E731
    per_pixel = mixed_loss(ce, logits, y, y_b, lam, reduction="none")
    assert torch.allclose(got, per_pixel[:, 1:].mean())
    plain = module.source_loss(logits, {"mask": y})
    assert torch.allclose(plain, F.cross_entropy(logits, y, ignore_index=255))


small_cfg = shrunk_config


EVERYTHING = ["data.debias.cutmix.enabled=true", "data.debias.classmix.enabled=true",
              "data.debias.lff.enabled=true",
              "data.debias.selecmix.enabled=true", "data.debias.rare_class.enabled=true"]


class Snap(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch = batch


@pytest.mark.parametrize("method", ["source_only", "adversarial", "dranet", "self_training"])
def test_every_option_trains_with_each_method(toy_root, tmp_path, method):
    extra = EVERYTHING + (["data.debias.style_swap.enabled=true"] if method == "dranet" else [])
    cfg = small_cfg(toy_root, tmp_path, method, *extra)
    module, dm = build.build_module(cfg), build.build_datamodule(cfg)
    snap = Snap()
    trainer = build.build_trainer(cfg, tmp_path, [snap], module.optimizer_steps_per_iteration)
    biased0 = {k: v.clone() for k, v in module.biased.state_dict().items()}
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2 * module.optimizer_steps_per_iteration
    assert "lam" in snap.batch["source"] and isinstance(snap.batch["seed"], int)
    # the biased network trained, LfF statistics hold the 2 x 2 source images seen
    assert any(not torch.equal(v, biased0[k]) for k, v in module.biased.state_dict().items()
               if v.is_floating_point())
    assert 1 <= int(module.lff_stats.updated.any(1).sum()) <= 4
    assert module.lff_stats.state_dict()["ema_b"].shape == (len(dm.source_train), 19)


def test_style_swap_needs_a_codec_outside_dranet(toy_root, tmp_path):
    with pytest.raises(ConfigError, match="codec_checkpoint"):
        small_cfg(toy_root, tmp_path, "source_only", "data.debias.style_swap.enabled=true")
    with pytest.raises(ConfigError, match="codec_checkpoint is for other methods"):
        small_cfg(toy_root, tmp_path, "dranet", "data.debias.style_swap.enabled=true",
                  "data.debias.style_swap.codec_checkpoint=x.ckpt")
    with pytest.raises(ConfigError, match=r"alpha_range must be \[min, max\]"):
        small_cfg(toy_root, tmp_path, "dranet", "data.debias.style_swap.alpha_range=[0.8,0.2]")
    with pytest.raises(ConfigError, match="enable one of them"):
        small_cfg(toy_root, tmp_path, "source_only", "data.debias.mixup.enabled=true",
                  "data.debias.selecmix.enabled=true")


def test_style_swap_with_a_codec_checkpoint(toy_root, tmp_path):
    from uda.cli import main
    dra = tmp_path / "dra"
    assert main(["train", "--config", str(REPO / "configs/toy/dranet.yaml"),
                 f"data.source.root={toy_root / 'source'}", f"data.target.root={toy_root / 'target'}",
                 f"run.dir={dra}", "trainer.max_steps=1", *shrink(*CROPS)]) == 0
    ckpt = dra / "checkpoints" / "last.ckpt"
    cfg = small_cfg(toy_root, tmp_path / "so", "source_only", "data.debias.style_swap.enabled=true",
                    "data.debias.style_swap.p=1.0", f"data.debias.style_swap.codec_checkpoint={ckpt}")
    module, dm = build.build_module(cfg), build.build_datamodule(cfg)
    build.attach_style_codec(module, cfg)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    enc = module.codec_translator().encoder.state_dict()
    assert all(torch.equal(v, state[f"translator.encoder.{k}"]) for k, v in enc.items())
    assert not any(k.startswith("_codec") for k in module.state_dict())  # not saved with it
    trainer = build.build_trainer(cfg, tmp_path / "so", [], 1)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2
    # the registered codec restyles every source image (p=1), labels untouched
    batch = coded_batch()
    batch["source"]["image"] = torch.randn(B, 3, 32, 64)
    batch["source"]["mask"] = torch.zeros(B, 32, 64, dtype=torch.long)
    batch["target"]["image"] = torch.randn(B, 3, 32, 64)
    out = dm.augment(batch, 0)["source"]
    assert (out["image"] - batch["source"]["image"]).flatten(1).abs().amax(1).min() > 0.1
    assert torch.equal(out["mask"], batch["source"]["mask"])


def test_debias_checkpoint_evaluates_like_training(toy_root, tmp_path):
    """Teacher and biased network are part of the checkpoint; `uda evaluate` rebuilds them."""
    import json
    from uda.cli import main
    run = tmp_path / "run"
    assert main(["train", "--config", str(REPO / "configs/toy/self_training.yaml"),
                 f"data.source.root={toy_root / 'source'}", f"data.target.root={toy_root / 'target'}",
                 f"run.dir={run}", "trainer.max_steps=2", *shrink(*CROPS),
                 "data.debias.lff.enabled=true"]) == 0
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(run / "checkpoints/last.ckpt"), "--output",
                 str(out), "trainer.progress_bar=false"]) == 0
    trained = json.loads((run / "results.json").read_text())
    assert json.loads(out.read_text())["confusion_matrix"] == trained["confusion_matrix"]


def test_datamodule_seeds_augmentations_by_rank_and_iteration(toy_root, tmp_path):
    cfg = small_cfg(toy_root, tmp_path, "source_only", "data.debias.cutmix.enabled=true",
                    "data.debias.cutmix.p=1.0")
    dm = build.build_datamodule(cfg)
    batch = coded_batch()
    a, b, c = dm.augment(batch, 3), dm.augment(batch, 3), dm.augment(batch, 4)
    assert torch.equal(a["source"]["image"], b["source"]["image"])
    assert not torch.equal(a["source"]["image"], c["source"]["image"])


def test_rare_class_sampling_in_the_train_stream():
    counts = torch.zeros(6, 3, dtype=torch.long)
    counts[:, 0] = 100
    counts[5, 2] = 5  # class 2 is rare and only in image 5
    rcs = RareClassSampler(counts, temperature=0.01)
    s = UDATrainSampler(6, 4, seed=1, source_index_at=rcs.index_at)
    it = iter(s)
    draws = [next(it)[0] for _ in range(200)]
    # class 2 (rarest) is drawn with probability ~1 (temperature 0.01) -> mostly image 5
    assert draws.count(5) > 150
    resumed = UDATrainSampler(6, 4, seed=1, start=50, source_index_at=rcs.index_at)
    assert [next(iter(resumed))[0]] == draws[50:51]


class DumpDebiasState(pl.Callback):
    def __init__(self, out):
        self.out = out

    def on_train_end(self, trainer, pl_module):
        state = {f"lff.{k}": v for k, v in pl_module.lff_stats.state_dict().items()
                 if torch.is_tensor(v)}
        state.update({k: v.detach().clone() for k, v in pl_module.state_dict().items()})
        state["seen"] = pl_module.seen
        torch.save(state, self.out / f"rank{trainer.global_rank}.pt")


class RecordIndices(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        pl_module.seen = getattr(pl_module, "seen", []) + batch["source"]["index"].tolist()


@pytest.mark.ddp
def test_two_ranks_share_lff_statistics_teacher_and_biased_network(toy_root, tmp_path):
    cfg = small_cfg(toy_root, tmp_path, "self_training", "data.debias.lff.enabled=true",
                    "data.debias.cutmix.enabled=true",
                    "trainer.max_steps=3", "trainer.val_every=3", "trainer.devices=2",
                    "trainer.strategy=ddp_fork")
    module, dm = build.build_module(cfg), build.build_datamodule(cfg)
    trainer = build.build_trainer(cfg, tmp_path, [RecordIndices(), DumpDebiasState(tmp_path)], 1)
    trainer.fit(module, datamodule=dm)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    differ = [k for k in a if k != "seen" and not torch.equal(a[k], b[k])]
    assert not differ, f"differs between ranks: {differ[:5]}"
    # the merged table holds exactly the images both ranks saw (ranks draw disjoint samples)
    rows = set(torch.nonzero(a["lff.updated"].any(1)).squeeze(1).tolist())
    assert rows == set(a["seen"]) | set(b["seen"]) and set(a["seen"]) != set(b["seen"])


def test_lff_statistics_are_the_modules_checkpoint_state_and_old_checkpoints_load(toy_root,
                                                                                   tmp_path):
    cfg = small_cfg(toy_root, tmp_path, "source_only", "data.debias.lff.enabled=true")
    module = build.build_module(cfg)
    assert module.lff_stats is None  # sized when a fit starts (setup), from the datamodule
    n = len(build.build_source_train(cfg, train=False))
    module.setup_lff(n)
    assert module.lff_stats.ema_b.shape == (n, 19)
    module.lff_stats.ema_b[3, 2] = 0.5
    saved = {}
    module.on_save_checkpoint(saved)
    assert torch.equal(saved["lff"]["ema_b"], module.lff_stats.ema_b)
    for checkpoint in (saved, {"UDADataModule": {"lff": saved["lff"]}}):  # now, before
        fresh = build.build_module(cfg)
        fresh.on_load_checkpoint(checkpoint)
        assert float(fresh.lff_stats.ema_b[3, 2]) == 0.5
    off = build.build_module(small_cfg(toy_root, tmp_path, "source_only"))
    with pytest.raises(ValueError, match="data.debias.lff.enabled=true"):
        off.on_load_checkpoint(saved)
