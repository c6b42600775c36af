"""DINOv2 ViT segmenter (uda.models.vit): the segmenter interface at sizes that are not multiples
of 14, optimizer groups, parameter counts, weight files in the official / timm / own formats
(written by the tests from random weights), refused files, and the `model.name=dinov2` config."""
import ast
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from conftest import REPO, SHRINK
from uda.cli import main
from uda.config import ConfigError, load_config
from uda.models.vit import ViTSegmenter, default_out_indices
from uda.models.vit_weights import OFFICIAL, OWN, TIMM
from uda.models.weights import WeightsError

TOY = dict(depth=4, dim=96)  # a reduced ViT-S: fast on CPU, the same code paths
TINY = [*SHRINK, "trainer.max_steps=1", "trainer.accelerator=cpu"]


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def vit_count(dim: int, depth: int) -> int:
    """Parameters of a DINOv2 ViT/14 backbone (no classifier): patch embedding, class token,
    37x37+1 position embeddings (518 px), per block two LayerNorms, qkv, projection, two layer
    scales and a 4x MLP (12 D^2 + 15 D), the final LayerNorm."""
    return (dim * 3 * 14 * 14 + dim) + dim + 1370 * dim + depth * (12 * dim ** 2 + 15 * dim) \
        + 2 * dim


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    return ViTSegmenter(num_classes=19, variant="s", **TOY).eval()


def backbone_sd(net) -> dict:
    return {k: v.clone() for k, v in net.backbone.state_dict().items()}


def assert_same_backbone(a, b) -> None:
    sa, sb = a.backbone.state_dict(), b.backbone.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ---------------------------------------------------------------------------- interface
@pytest.mark.parametrize("size", [(65, 97), (30, 43), (28, 56)])
def test_logits_and_features_at_any_size(toy, size):
    h, w = size
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        logits = toy(x)
        logits2, feats = toy(x, return_features=True)
    grid = (math.ceil(h / 14), math.ceil(w / 14))
    assert logits.shape == (2, 19, h, w) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, logits2)
    assert set(feats) == {"enc", "levels"} and len(feats["levels"]) == 4
    assert all(f.shape == (2, 96, *grid) for f in feats["levels"])
    assert feats["enc"] is feats["levels"][-1]
    # the padding: the logits are those of the zero-padded image, cropped
    padded = F.pad(x, (0, grid[1] * 14 - w, 0, grid[0] * 14 - h))
    with torch.no_grad():
        torch.testing.assert_close(toy(padded)[..., :h, :w], logits, rtol=0, atol=0)
        # the deepest level is the backbone's normalised output tokens (class token dropped)
        tokens = toy.backbone.forward_features(padded)[:, 1:]
    torch.testing.assert_close(feats["enc"], tokens.transpose(1, 2).reshape(2, 96, *grid))


def test_gradients_reach_every_parameter(toy):
    net = ViTSegmenter(num_classes=5, variant="s", **TOY).train()
    net(torch.randn(2, 3, 30, 44)).square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_out_indices_and_bad_arguments():
    assert default_out_indices(12) == (2, 5, 8, 11)
    assert default_out_indices(24) == (5, 11, 17, 23)
    assert default_out_indices(4) == (0, 1, 2, 3)
    assert ViTSegmenter(3, "s", out_indices=(0, 1, 3, 5), depth=6, dim=96).out_indices \
        == (0, 1, 3, 5)
    with pytest.raises(ValueError, match="4 increasing block indices in 0..3"):
        ViTSegmenter(3, "s", out_indices=(0, 1, 2, 4), **TOY)
    with pytest.raises(ValueError, match="variant='xl'"):
        ViTSegmenter(3, "xl")
    with pytest.raises(ValueError, match="head='linear'"):
        ViTSegmenter(3, "s", head="linear", **TOY)
    with pytest.raises(ValueError, match="dim=100 must be a multiple of 6"):
        ViTSegmenter(3, "s", depth=4, dim=100)


# ---------------------------------------------------------------------------- optimizer groups
@pytest.mark.parametrize("decay", [0.9, 1.0])
def test_param_groups(toy, decay):
    net = ViTSegmenter(num_classes=19, variant="s", layer_decay=decay, **TOY)
    lr = 6e-5
    groups = net.param_groups(lr)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in net.parameters() if p.requires_grad}
    by = {g["name"]: g for g in groups}
    assert by["heads"]["lr"] == pytest.approx(10 * lr)
    assert {id(p) for p in by["heads"]["params"]} == {id(p) for p in net.head.parameters()}
    for i in range(4):
        group = by[f"backbone.blocks.{i}"]
        assert group["lr"] == pytest.approx(lr * decay ** (3 - i))
        assert group["lr_mult"] == pytest.approx(decay ** (3 - i))
    last = {id(p) for p in by["backbone.blocks.3"]["params"]}
    assert {id(p) for p in net.backbone.norm.parameters()} <= last
    embed = by["backbone.embed"]
    b = net.backbone
    assert {id(p) for p in embed["params"]} == {id(b.pos_embed), id(b.cls_token),
                                                id(b.patch_embed.proj.weight),
                                                id(b.patch_embed.proj.bias)}
    assert embed["lr"] == pytest.approx(lr * decay ** 4)
    torch.optim.SGD(groups, lr=lr, momentum=0.9)  # accepted by an optimizer


# ---------------------------------------------------------------------------- parameter counts
def test_parameter_counts_of_the_variants():
    with torch.device("meta"):  # no memory, no init cost
        nets = {v: ViTSegmenter(19, v) for v in "sbl"}
    expected = {"s": (384, 12, 22_056_192), "b": (768, 12, 86_579_712),
                "l": (1024, 24, 304_367_616)}  # timm: 22.06M, 86.58M, 304.37M
    for v, (dim, depth, count) in expected.items():
        assert vit_count(dim, depth) == count
        assert n_params(nets[v].backbone) == count
        assert tuple(nets[v].backbone.pos_embed.shape) == (1, 1370, dim)
    head = {"s": 1_607_088, "b": 6_421_344, "l": 11_412_608}
    assert {v: n_params(nets[v].head) for v in "sbl"} == head


@pytest.mark.slow
def test_vit_l_at_real_shape():
    torch.manual_seed(0)
    net = ViTSegmenter(19, "l").eval()
    assert n_params(net.backbone) == 304_367_616  # timm's vit_large_patch14_dinov2: 304.37M
    assert net.out_indices == (5, 11, 17, 23)
    with torch.no_grad():
        logits, feats = net(torch.randn(1, 3, 60, 90), return_features=True)
    assert logits.shape == (1, 19, 60, 90) and torch.isfinite(logits).all()
    assert [f.shape for f in feats["levels"]] == [(1, 1024, 5, 7)] * 4


# ---------------------------------------------------------------------------- weight files
def official_sd(net, chunks: int = 0) -> dict:
    """The backbone in the facebookresearch/dinov2 layout: timm's names plus mask_token; with
    `chunks`, blocks saved as blocks.<chunk>.<i>.* (block_chunks > 0)."""
    sd = backbone_sd(net)
    sd["mask_token"] = torch.zeros(1, net.embed_dim)
    if chunks:
        per = net.depth // chunks
        sd = {(f"blocks.{int(k.split('.')[1]) // per}.{k[len('blocks.'):]}"
               if k.startswith("blocks.") else k): v for k, v in sd.items()}
    return sd


def test_official_checkpoint_of_vit_s_loads(tmp_path):
    torch.manual_seed(1)
    ref = ViTSegmenter(19, "s")
    sd = official_sd(ref)
    assert "blocks.0.ls1.gamma" in sd and sd["pos_embed"].shape == (1, 1370, 384)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(sd, path)
    torch.manual_seed(2)
    net = ViTSegmenter(19, "s", pretrained=path)
    rep = net.load_report
    assert rep.format == OFFICIAL
    assert rep.loaded == rep.backbone == len(sd) - 1 and rep.heads == 0 and rep.unused == 0
    assert rep.uninitialised and all(n.startswith("head.") for n in rep.uninitialised)
    assert_same_backbone(net, ref)


def test_official_checkpoint_with_block_chunks_loads(tmp_path, toy):
    sd = official_sd(toy, chunks=2)
    assert "blocks.1.3.attn.qkv.weight" in sd
    path = tmp_path / "teacher_backbone.pth"
    torch.save(sd, path)
    net = ViTSegmenter(19, "s", pretrained=path, **TOY)
    assert net.load_report.format == OFFICIAL
    assert_same_backbone(net, toy)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_state_dict_loads(tmp_path, toy, suffix):
    path = tmp_path / f"model{suffix}"
    sd = backbone_sd(toy)
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save(sd, path)
    net = ViTSegmenter(7, "s", pretrained=path, **TOY)
    assert net.load_report.format == TIMM and net.load_report.backbone == len(sd)
    assert_same_backbone(net, toy)


def test_timm_file_at_another_grid_is_resampled_by_timm(tmp_path):
    """A timm ViT saved at 224 px (16x16 position embeddings) gets them resampled to 37x37 with
    timm's own resampling (bicubic, antialiased)."""
    import timm
    torch.manual_seed(3)
    small = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0,
                              img_size=224, depth=4, embed_dim=96)
    assert small.pos_embed.shape == (1, 257, 96)
    path = tmp_path / "vit224.pth"
    torch.save(small.state_dict(), path)
    net = ViTSegmenter(19, "s", pretrained=path, **TOY)
    want = resample_abs_pos_embed(small.pos_embed.detach(), new_size=(37, 37),
                                  old_size=(16, 16), num_prefix_tokens=1)
    torch.testing.assert_close(net.backbone.pos_embed, want, rtol=0, atol=0)
    torch.testing.assert_close(net.backbone.blocks[3].mlp.fc2.weight,
                               small.blocks[3].mlp.fc2.weight, rtol=0, atol=0)


def test_own_checkpoint_loads_heads_too(tmp_path, toy):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"segmenter.{k}": v for k, v in toy.state_dict().items()}}, path)
    torch.manual_seed(9)
    net = ViTSegmenter(19, "s", pretrained=path, **TOY)
    rep = net.load_report
    assert rep.format == OWN and rep.missing == 0 and rep.loaded == len(toy.state_dict())
    for (ka, a), (kb, b) in zip(net.state_dict().items(), toy.state_dict().items()):
        assert ka == kb and torch.equal(a, b), ka
    other = ViTSegmenter(5, "s", pretrained=path, **TOY)  # another class count: backbone only
    assert other.load_report.shape_mismatch == ["head.classifier.weight"]


def refused(path, match: str, **kw):
    with pytest.raises(WeightsError, match=match) as e:
        ViTSegmenter(19, "s", pretrained=path, **{**TOY, **kw})
    assert str(path) in str(e.value)
    return str(e.value)


def test_files_that_do_not_fit_are_refused(tmp_path, toy):
    wide = ViTSegmenter(19, "s", depth=4, dim=192)
    torch.save(official_sd(wide), tmp_path / "wide.pth")
    msg = refused(tmp_path / "wide.pth", "holds a ViT with embed_dim 192, depth 4, patch size 14")
    assert "the network is DINOv2 ViT-S/14 reduced (embed_dim 96, depth 4)" in msg
    # a ViT-B checkpoint (its shapes, few tensors) for a ViT-S network: the fix names the variant
    vit_b = {"mask_token": torch.zeros(1, 768),
             "patch_embed.proj.weight": torch.zeros(768, 3, 14, 14),
             "blocks.11.norm1.weight": torch.zeros(768)}
    torch.save(vit_b, tmp_path / "dinov2_vitb14_pretrain.pth")
    with pytest.raises(WeightsError, match=r"depth 12, .*: set model.vit_variant=b$"):
        ViTSegmenter(19, "s", pretrained=tmp_path / "dinov2_vitb14_pretrain.pth")
    msg = refused(tmp_path / "dinov2_vitb14_pretrain.pth", "set model.vit_variant=b and leave "
                  "model.vit_depth / model.vit_dim unset")
    # patch 16 (another ViT family)
    p16 = {"patch_embed.proj.weight": torch.zeros(96, 3, 16, 16), "blocks.3.norm1.weight":
           torch.zeros(96)}
    torch.save(p16, tmp_path / "vit_p16.pth")
    refused(tmp_path / "vit_p16.pth",
            "patch size 16; .*takes DINOv2 ViT-S/14, ViT-B/14 or ViT-L/14")
    # registers
    reg = official_sd(toy) | {"register_tokens": torch.zeros(1, 4, 96)}
    torch.save(reg, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    refused(tmp_path / "dinov2_vits14_reg4_pretrain.pth", "is a DINOv2 with registers")
    # a tensor missing
    sd = official_sd(toy)
    del sd["blocks.2.mlp.fc2.weight"]
    torch.save(sd, tmp_path / "partial.pth")
    refused(tmp_path / "partial.pth", r"leaves 1 backbone tensors .* unset .*blocks\.2\.mlp\.fc2")
    # not a ViT at all (a torchvision ResNet's keys)
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 64)},
               tmp_path / "resnet.pth")
    refused(tmp_path / "resnet.pth", "is not a DINOv2 ViT weights file: expected timm's names")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    refused(tmp_path / "junk.safetensors", "cannot read pretrained weights file .* as safetensors")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        ViTSegmenter(19, "s", pretrained=tmp_path / "nope.pth", **TOY)


# ---------------------------------------------------------------------------- config and CLI
ROOTS = ["data.source.root=/s", "data.target.root=/t"]


def test_config_options():
    path = REPO / "configs/toy/source_only.yaml"
    cfg = load_config(path, ROOTS + ["model.name=dinov2", "model.vit_variant=b"])
    assert (cfg.model.vit_variant, cfg.model.vit_depth, cfg.model.vit_dim) == ("b", None, None)
    assert cfg.model.vit_layer_decay == 0.9
    for bad, match in [("model.vit_variant=g", "model.vit_variant='g' is not one of s, b, l"),
                       ("model.vit_depth=3", "model.vit_depth must be >= 4"),
                       ("model.vit_dim=100", "model.vit_dim must be a positive multiple of 48"),
                       ("model.vit_layer_decay=0", r"model.vit_layer_decay must be in \(0, 1\]")]:
        with pytest.raises(ConfigError, match=match):
            load_config(path, ROOTS + ["model.name=dinov2", bad])


def test_build_and_train_a_toy_dinov2(toy_root, tmp_path):
    from uda import build
    overrides = [f"data.source.root={toy_root / 'source'}",
                 f"data.target.root={toy_root / 'target'}", *TINY, "model.name=dinov2",
                 "model.vit_depth=4", "model.vit_dim=96"]
    cfg = load_config(REPO / "configs/toy/source_only.yaml", overrides + [f"run.dir={tmp_path}"])
    net = build.build_segmenter(cfg)
    assert isinstance(net, ViTSegmenter) and (net.depth, net.embed_dim) == (4, 96)
    run = tmp_path / "run"
    assert main(["train", "--config", str(REPO / "configs/toy/source_only.yaml"), *overrides,
                 f"run.dir={run}"]) == 0
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_uda_train_refuses_a_file_that_does_not_fit(toy_root, tmp_path, capsys):
    weights = tmp_path / "dinov2_vitb14_pretrain.pth"
    torch.save({"mask_token": torch.zeros(1, 768),
                "patch_embed.proj.weight": torch.zeros(768, 3, 14, 14),
                "blocks.11.norm1.weight": torch.zeros(768)}, weights)
    run = tmp_path / "run"
    rc = main(["train", "--config", str(REPO / "configs/toy/source_only.yaml"),
               f"data.source.root={toy_root / 'source'}", f"data.target.root={toy_root / 'target'}",
               f"run.dir={run}", *TINY, "model.name=dinov2", f"model.pretrained={weights}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"uda: error: model.pretrained: {weights} ({OFFICIAL}) holds a ViT "
                               "with embed_dim 768, depth 12")
    assert lines[0].endswith("set model.vit_variant=b")
    assert not run.exists()


def test_timm_is_imported_only_by_the_vit_modules():
    """timm takes seconds to import: only the DINOv2 modules import it, and no project module
    imports them at module level (uda.build does inside the dinov2 branch), so `uda --help`, the
    config and the other networks never load it (ast only: fast)."""
    sys.path.insert(0, str(REPO / "scripts"))
    import check_imports
    modules = check_imports.module_files()

    def imports_timm(path) -> bool:
        tree = ast.parse(path.read_text())
        return any(not in_function and any(n.split(".")[0] == "timm" for n in _names(node))
                   for node, in_function in check_imports._walk(tree))

    direct = {m for m, path in modules.items() if imports_timm(path)}
    assert direct == {"uda.models.vit", "uda.models.vit_weights", "uda.models.pyramid_head"}
    edges = [e for e in check_imports.import_edges() if e.level == "module"]
    importers = set(direct)
    while new := {e.source for e in edges if e.target in importers} - importers:
        importers |= new
    assert importers == direct
    assert any(e.source == "uda.build" and e.target == "uda.models.vit" and e.level == "function"
               for e in check_imports.import_edges())


def _names(node) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return [node.module or ""] if not node.level else []


def test_checkpointing_changes_memory_not_results():
    """model.vit_checkpointing: the same logits and gradients (the backward recomputes each
    block); refused for other networks."""
    torch.manual_seed(0)
    plain = ViTSegmenter(5, "s", depth=4, dim=96)
    ckpt = ViTSegmenter(5, "s", depth=4, dim=96, checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.backbone.grad_checkpointing and not plain.backbone.grad_checkpointing
    x = torch.randn(2, 3, 28, 42)
    grads = []
    for net in (plain, ckpt):
        net.train()
        out = net(x)
        out.square().mean().backward()
        grads.append((out.detach(), net.backbone.blocks[0].attn.qkv.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    from uda.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="model.vit_checkpointing is for model.name=dinov2"):
        load_config(None, ["data.source.root=/s", "data.target.root=/t",
                           "model.vit_checkpointing=true"])
