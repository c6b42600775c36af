"""MiT-B0..B5 segmenter (uda.models.mit): the segmenter interface at odd sizes, the DAFormer and
SegFormer heads, DAFormer's optimizer groups, and the weight files it loads (official
SegFormer mit_bX.pth, SMP, HuggingFace, DAFormer checkpoints), built here in each format."""
import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conftest import REPO, SHRINK
from uda.cli import main
from uda.models.mit import MiTSegmenter
from uda.models.mit_heads import DAFormerHead, SegFormerHead
from uda.models.mit_weights import HF, OFFICIAL, OURS, SMP_MODEL
from uda.models.weights import WeightsError

# The published MiT variants: the official ``mit_b0`` .. ``mit_b5`` classes of NVlabs/SegFormer
# (and DAFormer's copy, mmseg/models/backbones/mix_transformer.py): stage widths, depths;
# heads (1, 2, 5, 8), spatial reduction (8, 4, 2, 1), MLP ratio 4, qkv_bias=True for all.
ARCH = {
    "b0": ([32, 64, 160, 256], [2, 2, 2, 2]),
    "b1": ([64, 128, 320, 512], [2, 2, 2, 2]),
    "b2": ([64, 128, 320, 512], [3, 4, 6, 3]),
    "b5": ([64, 128, 320, 512], [3, 6, 40, 3]),
}
SR = (8, 4, 2, 1)


def official_shapes(variant: str, imagenet_classes: int = 1000) -> dict[str, tuple]:
    """Key -> shape of an official MiT ImageNet file (mit_bX.pth), from the official module
    names: ``patch_embed{s}`` = OverlapPatchEmbed(proj: Conv2d k7 (stage 1) / k3, norm:
    LayerNorm); ``block{s}`` = blocks of (norm1, attn = Attention(q: Linear C->C, kv: Linear
    C->2C, proj: Linear C->C, and when sr_ratio > 1 sr: Conv2d k=stride=sr, norm: LayerNorm),
    norm2, mlp = Mlp(fc1: Linear C->4C, dwconv.dwconv: depthwise Conv2d 3x3, fc2: Linear 4C->C));
    ``norm{s}`` LayerNorm; ``head`` the ImageNet classifier (Linear C4 -> 1000)."""
    widths, depths = ARCH[variant]
    out, prev = {}, 3
    for s, (c, d, sr) in enumerate(zip(widths, depths, SR), start=1):
        k = 7 if s == 1 else 3
        out |= {f"patch_embed{s}.proj.weight": (c, prev, k, k), f"patch_embed{s}.proj.bias": (c,),
                f"patch_embed{s}.norm.weight": (c,), f"patch_embed{s}.norm.bias": (c,)}
        for j in range(d):
            b = f"block{s}.{j}."
            layers = {"norm1": [(c,)], "attn.q": [(c, c), (c,)], "attn.kv": [(2 * c, c), (2 * c,)],
                      "attn.proj": [(c, c), (c,)], "norm2": [(c,)],
                      "mlp.fc1": [(4 * c, c), (4 * c,)], "mlp.dwconv.dwconv": [(4 * c, 1, 3, 3),
                                                                              (4 * c,)],
                      "mlp.fc2": [(c, 4 * c), (c,)]}
            if sr > 1:
                layers |= {"attn.sr": [(c, c, sr, sr), (c,)], "attn.norm": [(c,)]}
            for name, shapes in layers.items():
                w, bias = (shapes * 2)[:2]  # a norm's weight and bias have one shape
                out |= {f"{b}{name}.weight": w, f"{b}{name}.bias": bias}
        out |= {f"norm{s}.weight": (c,), f"norm{s}.bias": (c,)}
        prev = c
    if imagenet_classes:
        out |= {"head.weight": (imagenet_classes, widths[-1]), "head.bias": (imagenet_classes,)}
    return out


def official_file(variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.02
            for k, shape in official_shapes(variant).items()}


# HuggingFace transformers' Segformer module names (modeling_segformer.py: SegformerEncoder with
# patch_embeddings[i] (proj, layer_norm), block[i][j] (layer_norm_1, attention.self.{query, key,
# value, sr, layer_norm}, attention.output.dense, layer_norm_2, mlp.{dense1, dwconv.dwconv,
# dense2}), layer_norm[i]; under ``segformer.``; ``classifier`` the ImageNet head).
HF_NAMES = {"norm1": "layer_norm_1", "norm2": "layer_norm_2", "attn.q": "attention.self.query",
            "attn.sr": "attention.self.sr", "attn.norm": "attention.self.layer_norm",
            "attn.proj": "attention.output.dense", "mlp.fc1": "mlp.dense1",
            "mlp.fc2": "mlp.dense2", "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
            "k": "attention.self.key", "v": "attention.self.value"}
# transformers >= 5 renamed the modules (its state_dict(); save_pretrained writes the names
# above): stages[i] = (patch_embeddings (proj, layer_norm), blocks[j] (layernorm_before,
# attention.{q,k,v,o}_proj, attention.sequence_reduction.{sequence_reduction, layer_norm},
# layernorm_after, mlp.{fc1, dwconv.dwconv, fc2}), layer_norm).
HF5_NAMES = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.q": "attention.q_proj",
             "attn.sr": "attention.sequence_reduction.sequence_reduction",
             "attn.norm": "attention.sequence_reduction.layer_norm",
             "attn.proj": "attention.o_proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
             "mlp.dwconv.dwconv": "mlp.dwconv.dwconv", "k": "attention.k_proj",
             "v": "attention.v_proj"}


def to_hf(official: dict[str, torch.Tensor], v5: bool = False) -> dict[str, torch.Tensor]:
    names = HF5_NAMES if v5 else HF_NAMES
    patch, block, norm = (("stages.{}.patch_embeddings", "stages.{}.blocks", "stages.{}.layer_norm")
                          if v5 else ("encoder.patch_embeddings.{}", "encoder.block.{}",
                                      "encoder.layer_norm.{}"))
    out = {}
    for key, t in official.items():
        parts = key.split(".")
        top, p = parts[0], parts[-1]
        stage = top[-1].isdigit() and int(top[-1]) - 1
        if top == "head":
            out[f"classifier.{p}"] = t
        elif top.startswith("patch_embed"):
            layer = {"proj": "proj", "norm": "layer_norm"}[parts[1]]
            out[f"segformer.{patch.format(stage)}.{layer}.{p}"] = t
        elif top.startswith("norm"):
            out[f"segformer.{norm.format(stage)}.{p}"] = t
        else:
            pre = f"segformer.{block.format(stage)}.{parts[1]}."
            name = ".".join(parts[2:-1])
            if name == "attn.kv":  # the official kv rows: key first, then value
                k, v = t.chunk(2, 0)
                out[f"{pre}{names['k']}.{p}"] = k.clone()
                out[f"{pre}{names['v']}.{p}"] = v.clone()
            else:
                out[f"{pre}{names[name]}.{p}"] = t
    return out


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def b0():
    torch.manual_seed(0)
    return MiTSegmenter(num_classes=19, variant="b0", head="daformer", head_dim=32).eval()


# ---------------------------------------------------------------------------- interface
@pytest.mark.parametrize("head", ["daformer", "segformer"])
@pytest.mark.parametrize("size", [(33, 47), (65, 97), (64, 128)])
def test_logits_and_features_at_odd_sizes(head, size):
    torch.manual_seed(0)
    model = MiTSegmenter(num_classes=7, variant="b0", head=head, head_dim=16).eval()
    h, w = size
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        logits = model(x)
        logits2, feats = model(x, return_features=True)
    assert logits.shape == (2, 7, h, w) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, logits2)
    assert set(feats) == {"enc", "stages"}
    strides = [4, 8, 16, 32]
    assert [tuple(f.shape) for f in feats["stages"]] == [
        (2, c, math.ceil(h / s), math.ceil(w / s)) for c, s in zip([32, 64, 160, 256], strides)]
    assert feats["enc"] is feats["stages"][-1]
    assert model.num_classes == 7 and model.stage_channels == [32, 64, 160, 256]


def test_training_step_reaches_every_parameter():
    torch.manual_seed(0)
    model = MiTSegmenter(num_classes=5, variant="b0", head="daformer", head_dim=16).train()
    logits = model(torch.randn(2, 3, 32, 64))
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 5, (2, 32, 64))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_unknown_variant_and_head():
    with pytest.raises(ValueError, match="b6.*b0, b1, b2, b3, b4, b5"):
        MiTSegmenter(variant="b6")
    with pytest.raises(ValueError, match="uper.*daformer, segformer"):
        MiTSegmenter(variant="b0", head="uper")


# ---------------------------------------------------------------------------- architecture
def test_encoder_names_and_shapes_are_the_official_ones(b0):
    """SMP's encoder has the official module names and shapes (so mit_bX.pth loads by name)."""
    own = {k: tuple(v.shape) for k, v in b0.backbone.state_dict().items()}
    assert own == official_shapes("b0", imagenet_classes=0)


def daformer_head_params(widths, d, n):
    """Parameters of DAFormer's head from its official config (daformer_sepaspp_mitb5.py):
    embeddings Linear C_i -> d; ASPP on 4d: 1x1 conv (no bias) + BN; for dilations 6, 12, 18 a
    depthwise 3x3 (no bias) + BN(4d) and a pointwise 1x1 (no bias) + BN(d); bottleneck 3x3 conv
    4d -> d (no bias) + BN; classifier 1x1 d -> n."""
    embed = sum(c * d + d for c in widths)
    branch1 = 4 * d * d + 2 * d
    separable = 4 * d * 9 + 2 * 4 * d + 4 * d * d + 2 * d
    bottleneck = 4 * d * d * 9 + 2 * d
    return embed + branch1 + 3 * separable + bottleneck + d * n + n


def test_daformer_head_structure():
    head = DAFormerHead([64, 128, 320, 512], num_classes=19, dim=256)
    assert n_params(head) == daformer_head_params([64, 128, 320, 512], 256, 19) == 3_712_275
    branches = head.fuse_layer.aspp_modules
    assert branches[0].conv.kernel_size == (1, 1) and branches[0].conv.in_channels == 1024
    for branch, dilation in zip(branches[1:], (6, 12, 18)):
        dw, pw = branch.depthwise_conv.conv, branch.pointwise_conv.conv
        assert (dw.kernel_size, dw.dilation, dw.padding, dw.groups) == (
            (3, 3), (dilation, dilation), (dilation, dilation), 1024)
        assert (pw.kernel_size, pw.in_channels, pw.out_channels) == ((1, 1), 1024, 256)
    bottleneck = head.fuse_layer.bottleneck.conv
    assert (bottleneck.kernel_size, bottleneck.in_channels, bottleneck.padding) == (
        (3, 3), 1024, (1, 1))
    assert head.dropout.p == 0.1 and torch.all(head.conv_seg.bias == 0)
    assert abs(head.conv_seg.weight.std().item() - 0.01) < 2e-3


def test_segformer_head_structure():
    head = SegFormerHead([32, 64, 160, 256], num_classes=19, dim=256)
    # 4 linear embeddings, 1x1 fuse 1024 -> 256 (no bias) + BN, classifier 256 -> 19
    assert n_params(head) == sum(c * 256 + 256 for c in [32, 64, 160, 256]) + \
        1024 * 256 + 2 * 256 + 256 * 19 + 19
    assert head.linear_fuse.conv.kernel_size == (1, 1)


# ---------------------------------------------------------------------------- param groups
def test_param_groups_follow_daformer(b0):
    """mmseg paramwise_cfg custom_keys head: lr_mult 10, norm: decay_mult 0 (a parameter takes
    the first key its name contains, longest first: 'head' before 'norm')."""
    groups = {g["name"]: g for g in b0.param_groups(6e-5)}
    assert [(g["lr"], g["lr_mult"]) for g in groups.values()] == [
        (6e-5, 1.0), (6e-5, 1.0), (pytest.approx(6e-4), 10.0)]
    assert "weight_decay" not in groups["backbone"] and "weight_decay" not in groups["heads"]
    assert groups["backbone_norms"]["weight_decay"] == 0.0
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    named = dict(b0.named_parameters())
    mmcv = {"heads": {id(p) for n, p in named.items() if "head" in n},
            "backbone_norms": {id(p) for n, p in named.items() if "head" not in n and "norm" in n}}
    assert ids["heads"] == mmcv["heads"] and ids["backbone_norms"] == mmcv["backbone_norms"]
    layer_norms = {id(p) for m in b0.backbone.modules() if isinstance(m, nn.LayerNorm)
                   for p in m.parameters()}
    assert ids["backbone_norms"] == layer_norms
    assert sum(map(len, ids.values())) == len(named) == len(set.union(*ids.values()))


def test_norms_are_not_decayed():
    torch.manual_seed(0)
    model = MiTSegmenter(num_classes=3, variant="b0", head="segformer", head_dim=8)
    opt = torch.optim.SGD(model.param_groups(0.1), lr=0.1, weight_decay=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        lr = 1.0 if n.startswith("decode_head.") else 0.1
        decay = 0.0 if n.startswith("backbone.") and "norm" in n else 0.5
        torch.testing.assert_close(p.detach(), before[n] * (1 - lr * decay), msg=n)


# ---------------------------------------------------------------------------- weight files
def assert_encoder_is(model: MiTSegmenter, official: dict[str, torch.Tensor]):
    own = model.backbone.state_dict()
    assert set(own) == {k for k in official if not k.startswith("head.")}
    for k, v in own.items():
        torch.testing.assert_close(v, official[k], msg=k)


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "module."])
def test_official_file_loads(tmp_path, wrap):
    official = official_file("b0")
    obj = {"bare": official, "state_dict": {"state_dict": official},
           "module.": {f"module.{k}": v for k, v in official.items()}}[wrap]
    torch.save(obj, tmp_path / "mit_b0.pth")
    model = MiTSegmenter(19, "b0", head_dim=16, pretrained=tmp_path / "mit_b0.pth")
    assert_encoder_is(model, official)
    rep = model.load_report
    assert rep.format == OFFICIAL and rep.loaded == rep.backbone == len(official) - 2
    assert rep.unused == 2  # head.weight, head.bias
    assert rep.uninitialised and all(n.startswith("decode_head.") for n in rep.uninitialised)


def test_smp_model_file_loads(tmp_path):
    official = official_file("b0")
    sd = {f"encoder.{k}": v for k, v in official.items() if not k.startswith("head.")}
    sd["decoder.mlp_stage.0.linear.weight"] = torch.randn(256, 256)
    sd["segmentation_head.0.weight"] = torch.randn(19, 256, 1, 1)
    torch.save(sd, tmp_path / "smp_segformer.pth")
    model = MiTSegmenter(19, "b0", "segformer", 16, pretrained=tmp_path / "smp_segformer.pth")
    assert_encoder_is(model, official)
    assert model.load_report.format == SMP_MODEL and model.load_report.unused == 2


@pytest.mark.parametrize("v5", [False, True], ids=["hub_names", "transformers5_names"])
def test_hf_safetensors_file_loads_and_computes_the_same(tmp_path, v5):
    official = official_file("b0", seed=1)
    save_file(to_hf(official, v5), str(tmp_path / "model.safetensors"))
    torch.save(official, tmp_path / "mit_b0.pth")
    torch.manual_seed(0)
    from_hf = MiTSegmenter(19, "b0", head_dim=16, pretrained=tmp_path / "model.safetensors")
    torch.manual_seed(0)
    from_official = MiTSegmenter(19, "b0", head_dim=16, pretrained=tmp_path / "mit_b0.pth")
    assert_encoder_is(from_hf, official)
    assert from_hf.load_report.format == HF and from_hf.load_report.unused == 2  # classifier
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(from_hf.eval()(x), from_official.eval()(x))


def test_daformer_checkpoint_loads_its_model_not_its_copies(tmp_path):
    torch.manual_seed(0)
    trained = MiTSegmenter(19, "b0", "daformer", 16).state_dict()
    sd = {f"model.{k}": v for k, v in trained.items()}
    sd |= {f"ema_model.{k}": torch.zeros_like(v) for k, v in trained.items()}
    sd |= {f"imnet_model.{k}": torch.ones_like(v) for k, v in trained.items()}
    torch.save({"meta": {}, "state_dict": sd}, tmp_path / "daformer.pth")
    torch.manual_seed(1)
    model = MiTSegmenter(19, "b0", "daformer", 16, pretrained=tmp_path / "daformer.pth")
    rep = model.load_report
    assert rep.format == OURS and rep.missing == 0 and rep.loaded == len(trained)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, trained[k], msg=k)


def test_file_of_another_variant_is_refused_naming_it(tmp_path):
    torch.save(official_file("b2"), tmp_path / "mit_b2.pth")
    with pytest.raises(WeightsError) as e:
        MiTSegmenter(19, "b1", head_dim=8, pretrained=tmp_path / "mit_b2.pth")
    msg = str(e.value)
    assert str(tmp_path / "mit_b2.pth") in msg and "depths [3, 4, 6, 3] (mit_b2)" in msg
    assert "this network is mit_b1" in msg and "set model.variant=b2" in msg


def test_file_without_a_mit_encoder_is_refused(tmp_path):
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 64)},
               tmp_path / "resnet.pth")
    with pytest.raises(WeightsError) as e:
        MiTSegmenter(19, "b0", head_dim=8, pretrained=tmp_path / "resnet.pth")
    msg = str(e.value)
    assert msg.startswith(f"pretrained weights file {tmp_path / 'resnet.pth'} does not hold MiT")
    assert "'patch_embed1.proj.weight'" in msg and "'conv1.weight'" in msg


def test_config_choices():
    from uda.config import ConfigError, load_config
    roots = ["data.source.root=/s", "data.target.root=/t", "model.name=mit"]
    cfg = load_config(REPO / "configs/toy/source_only.yaml", roots)
    assert (cfg.model.variant, cfg.model.head, cfg.model.head_dim) == ("b5", "daformer", 256)
    with pytest.raises(ConfigError, match="model.variant='b7' is not one of b0, b1"):
        load_config(REPO / "configs/toy/source_only.yaml", roots + ["model.variant=b7"])
    with pytest.raises(ConfigError, match="model.head_dim must be >= 1"):
        load_config(REPO / "configs/toy/source_only.yaml", roots + ["model.head_dim=0"])


# ---------------------------------------------------------------------------- through the CLI
MIT_TOY = ["model.name=mit", "model.variant=b0", "model.head_dim=16"]


def train_argv(toy_root, run, *extra):
    return ["train", "--config", str(REPO / "configs/toy/source_only.yaml"),
            f"data.source.root={toy_root / 'source'}", f"data.target.root={toy_root / 'target'}",
            f"run.dir={run}", *SHRINK, "trainer.accelerator=cpu", *MIT_TOY, *extra]


@pytest.mark.parametrize("content", [b"not a checkpoint", "resnet"])
def test_cli_refuses_a_file_that_does_not_fit(toy_root, tmp_path, capsys, content):
    bad = tmp_path / "weights.pth"
    if content == "resnet":
        torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, bad)
    else:
        bad.write_bytes(content)
    run = tmp_path / "run"
    assert main(train_argv(toy_root, run, "trainer.max_steps=1", f"model.pretrained={bad}")) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("uda: error: model.pretrained: "), lines
    assert str(bad) in lines[0]
    assert ("does not hold MiT" if content == "resnet" else "cannot read") in lines[0]
    assert not run.exists()


def test_cli_trains_b0_from_an_official_file(toy_root, tmp_path, capsys):
    torch.save(official_file("b0"), tmp_path / "mit_b0.pth")
    run = tmp_path / "run"
    assert main(train_argv(toy_root, run, "trainer.max_steps=2", "trainer.val_every=2",
                           f"model.pretrained={tmp_path / 'mit_b0.pth'}")) == 0
    out = capsys.readouterr()
    assert "mit_b0 (daformer head, 16 channels)" in out.out + out.err
    assert (run / "checkpoints" / "last.ckpt").is_file()


# ---------------------------------------------------------------------------- real size
@pytest.mark.slow
def test_b5_at_real_size_has_the_official_parameters():
    """MiT-B5 as DAFormer trains it: encoder 81,443,008 parameters (SegFormer: 81.4M), names and
    shapes those of the official mit_b5.pth; DAFormer head (256) 3,712,275."""
    model = MiTSegmenter(19, "b5", "daformer", 256)
    shapes = official_shapes("b5", imagenet_classes=0)
    assert {k: tuple(v.shape) for k, v in model.backbone.state_dict().items()} == shapes
    assert n_params(model.backbone) == sum(math.prod(s) for s in shapes.values()) == 81_443_008
    assert n_params(model.decode_head) == daformer_head_params(ARCH["b5"][0], 256, 19)
    with torch.no_grad():
        logits, feats = model.eval()(torch.randn(1, 3, 512, 512), return_features=True)
    assert logits.shape == (1, 19, 512, 512) and feats["enc"].shape == (1, 512, 16, 16)
