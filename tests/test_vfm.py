"""The vfm recipe's pieces against hand-computed values and VFM-UDA++'s formulas
(tue-mps/vfm-uda-plusplus training/uda/uda.py get_feature_distance_loss; VFM-UDA's TokenMasking:
masked patch tokens replaced by one token before the position embedding), and its refusal of
networks other than DINOv2."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import REPO, shrunk_config
from uda import build
from uda.config import ConfigError, load_config
from uda.losses.masking import patch_block_mask
from uda.losses.vfm_feature_distance import vfm_feature_distance
from uda.models.vit import ViTSegmenter

torch.set_num_threads(1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- feature distance

def test_feature_distance_on_a_2x2_grid_by_hand():
    # frozen (1, 0) on every cell of a 2x2 grid; student: equal on two cells, (2, 0) and (-1, 0)
    frozen = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2).clone()
    student = frozen.clone()
    student[0, :, 1, 0] = torch.tensor([2.0, 0.0])
    student[0, :, 1, 1] = torch.tensor([-1.0, 0.0])
    student.requires_grad_(True)
    # (2, 0): smooth-L1 per channel 0.5 (|d| = 1) and 0 -> mean 0.25; cosine 1
    #   -> 0.1 x 0.25 + 0.9 x 0 = 0.025
    # (-1, 0): smooth-L1 |d| = 2 -> 1.5 and 0 -> mean 0.75; cosine -1
    #   -> 0.1 x 0.75 + 0.9 x 2 = 1.875
    # mean over the four cells (all count, no class selection): (0 + 0 + 0.025 + 1.875) / 4
    loss = vfm_feature_distance(student, frozen)
    assert loss.item() == pytest.approx(0.475, abs=1e-6)
    loss.backward()
    moved = student.grad.abs().sum(1)[0]
    assert moved.tolist()[0] == [0.0, 0.0] and all(v > 0 for v in moved.tolist()[1])


def test_feature_distance_resizes_the_frozen_grid_and_gives_it_no_gradient():
    frozen = torch.randn(1, 4, 2, 2, requires_grad=True)
    student = torch.nn.functional.interpolate(frozen.detach(), size=(4, 4), mode="bilinear",
                                              align_corners=False).requires_grad_(True)
    assert vfm_feature_distance(student, frozen).item() == pytest.approx(0.0, abs=1e-6)
    vfm_feature_distance(student + 1, frozen).backward()
    assert frozen.grad is None


# ---------------------------------------------------------------- masks aligned to the patches

def test_patch_block_mask_by_hand():
    # 30x44 pixels, 14-pixel blocks: a 3x4 grid from the top-left corner, the last row / column
    # cropped to 2 pixels; a cell is kept when its draw exceeds the ratio
    u = torch.rand(1, 1, 3, 4, generator=gen(3))
    mask = patch_block_mask(1, (30, 44), 14, 0.6, gen(3))
    assert mask.shape == (1, 1, 30, 44)
    for i in range(30):
        for j in range(44):
            assert mask[0, 0, i, j].item() == float(u[0, 0, i // 14, j // 14] > 0.6)


def test_patch_block_mask_masks_whole_blocks_at_the_ratio():
    mask = patch_block_mask(8, (224, 224), 28, 0.7, gen(0))
    blocks = mask.view(8, 1, 8, 28, 8, 28)
    assert torch.equal(blocks.amin(dim=(3, 5)), blocks.amax(dim=(3, 5)))  # whole blocks
    assert 1 - mask.mean().item() == pytest.approx(0.7, abs=0.04)  # 512 cells
    assert patch_block_mask(2, (28, 28), 14, 0.0, gen(0)).min() == 1  # ratio 0: none masked


def test_masked_patch_tokens_are_one_token_and_the_others_unchanged():
    """Token masking: a masked patch embeds to the patch embedding's bias wherever it is."""
    net = ViTSegmenter(19, "s", depth=4, dim=96).eval()
    x = torch.randn(2, 3, 42, 56)
    mask = patch_block_mask(2, (42, 56), 14, 0.5, gen(1))
    embed = net.backbone.patch_embed
    with torch.no_grad():
        plain, masked = embed(x), embed(x * mask)  # (B, 3, 4, D) tokens
    token_mask = mask[:, 0, ::14, ::14] == 0  # (B, 3, 4)
    assert 0 < token_mask.sum() < token_mask.numel()
    bias = embed.proj.bias.detach()
    assert torch.allclose(masked[token_mask], bias.expand(int(token_mask.sum()), -1), atol=1e-6)
    assert torch.equal(masked[~token_mask], plain[~token_mask])


# ---------------------------------------------------------------- the recipe

@pytest.fixture(scope="module")
def vfm_cfg(toy_root, tmp_path_factory):
    return shrunk_config(toy_root, tmp_path_factory.mktemp("vfm"), "vfm")


def test_masked_target_zeroes_whole_patches(vfm_cfg):
    module = build.build_module(vfm_cfg)
    module.augment_masked = False
    x = torch.randn(4, 3, 32, 64) + 5  # no pixel is 0 before masking
    out = module.masked_target(x, gen(2))
    mask = patch_block_mask(4, (32, 64), 14, 0.7, gen(2))
    assert torch.equal(out, x * mask)
    assert torch.equal(out == 0, (mask == 0).expand_as(out))


def test_feature_distance_pulls_towards_the_frozen_initial_network(vfm_cfg):
    module = build.build_module(vfm_cfg)
    frozen = {n: p.clone() for n, p in module.frozen.net.named_parameters()}
    student = dict(module.segmenter.named_parameters())
    assert all(torch.equal(p, student[n]) for n, p in frozen.items())  # the initial weights
    assert not any(p.requires_grad for p in module.frozen.parameters())
    groups = module.recipe_param_groups(1e-3)
    assert groups[0]["lr"] == pytest.approx(1e-2)
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in module.projector.parameters()}
    x = torch.randn(2, 3, 32, 64)
    features = module.segmenter(x, return_features=True)[1]["enc"]
    expected = 0.1 * vfm_feature_distance(module.projector(features), module.frozen(x)["enc"])
    loss = module.feature_distance({"image": x}, features)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert all(p.grad is None for p in module.frozen.parameters())
    assert all(p.grad is not None for p in module.projector.parameters())


def test_target_losses_add_the_target_feature_distance(vfm_cfg):
    module = build.build_module(vfm_cfg)
    x_t = torch.randn(2, 3, 32, 64)
    target = {"labels": torch.zeros(2, 32, 64, dtype=torch.long), "weight": torch.ones(2, 32, 64)}
    losses = module.target_losses({"target": {"image": x_t}}, target, gen(0))
    assert set(losses) == {"masked", "fd_target"}
    features = module.segmenter(x_t, return_features=True)[1]["enc"]
    assert losses["fd_target"].item() == pytest.approx(
        0.1 * module.distance_to_frozen(x_t, features).item(), rel=1e-6)


# ---------------------------------------------------------------- configuration

def roots(toy_root):
    return [f"data.source.root={toy_root / 'source'}", f"data.target.root={toy_root / 'target'}"]


def test_vfm_refuses_other_networks(toy_root):
    with pytest.raises(ConfigError, match=r"set model.name=dinov2 .*got model.name=small"):
        load_config(REPO / "configs/toy/vfm.yaml", roots(toy_root) + ["model.name=small"])
    with pytest.raises(ConfigError, match=r"mask_block_size must be a multiple of the ViT patch "
                                          r"size 14.*got 16"):
        load_config(REPO / "configs/toy/vfm.yaml",
                    roots(toy_root) + ["method.vfm.mask_block_size=16"])


def test_cli_refusal_is_one_error_line(toy_root, tmp_path):
    r = subprocess.run([sys.executable, "-m", "uda", "train", "--config",
                        str(REPO / "configs/toy/vfm.yaml"), "model.name=mit",
                        f"run.dir={tmp_path / 'run'}", *roots(toy_root)],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("uda: error: ")
    assert "model.name=dinov2" in lines[0] and "model.name=mit" in lines[0]
    assert not (tmp_path / "run").exists()


def test_projector_norm_is_timms_layernorm2d():
    from timm.layers import LayerNorm2d as TimmLayerNorm2d

    from uda.models.feature_projector import LayerNorm2d
    x = torch.randn(2, 8, 3, 5) * 3 + 1
    assert torch.allclose(LayerNorm2d(8)(x), TimmLayerNorm2d(8)(x), atol=1e-6)


@pytest.mark.parametrize("bench,variant,lr", [("gta5_cityscapes", "l", 2.83e-6),
                                              ("synthia_cityscapes", "b", 1.41e-5)])
def test_real_configs_hold_the_paper_settings(bench, variant, lr):
    cfg = load_config(REPO / f"configs/{bench}/vfm.yaml",
                      ["data.source.root=/s", "data.target.root=/t"])
    assert cfg.method.name == "vfm" and cfg.model.name == "dinov2"
    assert cfg.model.vit_variant == variant and cfg.model.vit_layer_decay == 0.9
    s = cfg.method.vfm
    assert (s.fd_source, s.fd_target, s.mask_ratio, s.mask_block_size, s.ema) == (
        0.1, 0.1, 0.7, 56, 0.999)
    o = cfg.method.optim
    assert (o.name, o.lr, o.weight_decay, o.warmup_iters, o.warmup_ratio, o.poly_power) == (
        "adamw", lr, 0.01, 1500, 1e-3, 1.0)
    assert list(cfg.data.target_transform.crop) == [1024, 1024]
    assert (cfg.eval.mode, list(cfg.eval.crop), list(cfg.eval.stride)) == (
        "slide", [1024, 1024], [512, 512])
