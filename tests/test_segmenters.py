"""DeepLabV2 (ResNet-50 for speed, ResNet-101 on the meta device for counts) and DRN-C-26: the
segmenter interface, output stride, optimizer groups, weight loading, frozen BatchNorm."""
import math

import pytest
import torch
import torchvision
from torch import nn

from uda.models.deeplabv2 import DeepLabV2, torchvision_download_hint
from uda.models.drn import DRNC26

SIZES = [(65, 97), (64, 64)]


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def deeplab_ml():
    torch.manual_seed(0)
    return DeepLabV2(num_classes=19, backbone="resnet50", multi_level=True).eval()


@pytest.fixture(scope="module")
def drn():
    torch.manual_seed(0)
    return DRNC26(num_classes=19).eval()


# ---------------------------------------------------------------------------- interface
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("which", ["deeplab", "drn"])
def test_logits_and_features(which, size, deeplab_ml, drn):
    model = deeplab_ml if which == "deeplab" else drn
    h, w = size
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        logits = model(x)
        logits2, feats = model(x, return_features=True)
    assert model.num_classes == 19
    assert logits.shape == (2, 19, h, w) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, logits2)
    enc_ch = 2048 if which == "deeplab" else 512
    assert feats["enc"].shape == (2, enc_ch, math.ceil(h / 8), math.ceil(w / 8))  # stride 8
    if which == "deeplab":
        assert set(feats) == {"enc", "aux_logits"}
        assert feats["aux_logits"].shape == (2, 19, h, w)
    else:
        assert set(feats) == {"enc"}


def test_single_level_has_no_aux():
    model = DeepLabV2(num_classes=5, backbone="resnet50").eval()
    assert model.aux_classifier is None
    with torch.no_grad():
        logits, feats = model(torch.randn(1, 3, 33, 47), return_features=True)
    assert logits.shape == (1, 5, 33, 47)
    assert set(feats) == {"enc"} and feats["enc"].shape == (1, 2048, 5, 6)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="resnet18"):
        DeepLabV2(backbone="resnet18")


def test_aspp_init_and_layout(deeplab_ml):
    for head, cin in [(deeplab_ml.classifier, 2048), (deeplab_ml.aux_classifier, 1024)]:
        assert [c.dilation for c in head.convs] == [(6, 6), (12, 12), (18, 18), (24, 24)]
        for c in head.convs:
            assert c.padding == c.dilation and c.kernel_size == (3, 3) and c.in_channels == cin
            assert torch.all(c.bias == 0)
            assert abs(c.weight.std().item() - 0.01) < 1e-3


# ---------------------------------------------------------------------------- param groups
@pytest.mark.parametrize("which", ["deeplab", "drn"])
def test_param_groups(which, deeplab_ml, drn):
    model = deeplab_ml if which == "deeplab" else drn
    groups = model.param_groups(2.5e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))  # exactly once
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone"]["lr"] == pytest.approx(2.5e-4)
    assert by_name["heads"]["lr"] == pytest.approx(2.5e-3)
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in by_name["backbone"]["params"]} == backbone_ids
    torch.optim.SGD(groups, lr=2.5e-4, momentum=0.9)  # accepted by an optimizer


# ---------------------------------------------------------------------------- parameter counts
def test_deeplabv2_resnet101_parameter_count():
    with torch.device("meta"):  # no memory, no init cost
        model = DeepLabV2(num_classes=19, backbone="resnet101")
        model_ml = DeepLabV2(num_classes=19, backbone="resnet101", multi_level=True)
        resnet = torchvision.models.resnet101(weights=None)
    resnet_no_fc = n_params(resnet) - (2048 * 1000 + 1000)
    aspp = lambda cin: 4 * (cin * 19 * 3 * 3 + 19)  # noqa: E731
    assert resnet_no_fc == 42_500_160
    assert n_params(model) == resnet_no_fc + aspp(2048) == 43_901_068
    assert n_params(model_ml) == resnet_no_fc + aspp(2048) + aspp(1024) == 44_601_560


def drn_c_26_table_count() -> int:
    """DRN-C-26 parameters from the paper's layer table: 7x7 stem (16 ch), levels of 3x3 basic
    blocks (channels, blocks) = (16,1) (32,1) (64,2) (128,2) (256,2) (512,2) (512,1) (512,1),
    a 1x1 projection + BN where the channel count or stride changes, BN (2 params) after every
    conv; no fc."""
    total = 3 * 16 * 49 + 2 * 16
    cin = 16
    for cout, blocks in [(16, 1), (32, 1), (64, 2), (128, 2), (256, 2), (512, 2), (512, 1),
                         (512, 1)]:
        for _ in range(blocks):
            total += cin * cout * 9 + cout * cout * 9 + 4 * cout
            if cin != cout:  # first block of levels 2-6 (levels 2-4 also stride 2)
                total += cin * cout + 2 * cout
            cin = cout
    return total


def test_drn_c_26_parameter_count(drn):
    assert drn_c_26_table_count() == 20_613_584
    assert n_params(drn.backbone) == 20_613_584  # with the ImageNet fc (512*1000+1000): 21_126_584
    assert n_params(drn) == 20_613_584 + 512 * 19 + 19


def test_drn_layout(drn):
    b = drn.backbone
    assert b.conv1.kernel_size == (7, 7) and b.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in b.modules())
    dil = [[blk.conv1.dilation[0] for blk in getattr(b, f"layer{i}")] for i in range(1, 9)]
    assert dil == [[1], [1], [1, 1], [1, 1], [2, 2], [4, 4], [2], [1]]
    assert [getattr(b, f"layer{i}")[0].residual for i in range(1, 9)] == [True] * 6 + [False] * 2
    assert b.layer7[0].downsample is None and b.layer8[0].downsample is None


# ---------------------------------------------------------------------------- pretrained loading
def test_deeplab_loads_torchvision_state_dict(tmp_path):
    torch.manual_seed(1)
    resnet = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50_random.pth"
    torch.save(resnet.state_dict(), path)
    model = DeepLabV2(num_classes=19, backbone="resnet50", pretrained=path)
    rep = model.load_report
    expected = len([k for k in resnet.state_dict() if not k.startswith("fc.")])
    assert rep.loaded == rep.backbone == expected and rep.heads == 0
    torch.testing.assert_close(model.backbone.conv1.weight, resnet.conv1.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.backbone.layer4[2].bn3.running_var,
                               resnet.layer4[2].bn3.running_var, rtol=0, atol=0)


def test_deeplab_loads_own_state_dict_in_checkpoint(tmp_path, deeplab_ml):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"segmenter.{k}": v for k, v in deeplab_ml.state_dict().items()},
                "global_step": 3}, path)
    torch.manual_seed(5)
    model = DeepLabV2(num_classes=19, backbone="resnet50", multi_level=True)
    rep = model.load_pretrained(path)
    assert rep.loaded == len(deeplab_ml.state_dict()) and rep.heads == 16 and rep.missing == 0
    for a, b in zip(model.state_dict().values(), deeplab_ml.state_dict().values()):
        assert torch.equal(a, b)
    # another number of classes: backbone loads, heads are skipped (reported)
    other = DeepLabV2(num_classes=7, backbone="resnet50", multi_level=True)
    rep = other.load_pretrained(path)
    assert rep.heads == 0 and rep.backbone == rep.loaded and len(rep.shape_mismatch) == 16


@pytest.mark.parametrize("which", ["deeplab", "drn"])
def test_pretrained_errors_name_the_file(tmp_path, which):
    build = (lambda p: DeepLabV2(backbone="resnet50", pretrained=p)) if which == "deeplab" \
        else (lambda p: DRNC26(pretrained=p))
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build(missing)
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"foo.weight": torch.zeros(3), "fc.weight": torch.zeros(1000, 512)}, unrelated)
    with pytest.raises(ValueError, match="unrelated.pth"):
        build(unrelated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="garbage.pth"):
        build(garbage)


def test_drn_loads_authors_layouts(tmp_path, drn):
    # ImageNet layout of the authors' drn_c_26 file: backbone names at top level + fc
    sd = {k[len("backbone."):]: v for k, v in drn.backbone.state_dict(prefix="backbone.").items()}
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 512, 1, 1), torch.randn(1000)
    path = tmp_path / "drn_c_26_imagenet.pth"
    torch.save(sd, path)
    torch.manual_seed(3)
    model = DRNC26(num_classes=19, pretrained=path)
    assert model.load_report.loaded == len(sd) - 2 and model.load_report.heads == 0
    torch.testing.assert_close(model.backbone.conv1.weight, drn.backbone.conv1.weight, rtol=0,
                               atol=0)
    assert not torch.equal(model.classifier.weight, drn.classifier.weight)
    # DRNSeg layout: base = Sequential(conv1, bn1, relu, layer1..8), seg = classifier
    names = ["conv1", "bn1", None] + [f"layer{i}" for i in range(1, 9)]
    seg = {}
    for k, v in drn.state_dict().items():
        if k.startswith("classifier."):
            seg["seg." + k[len("classifier."):]] = v
        else:
            head, rest = k[len("backbone."):].split(".", 1)
            seg[f"base.{names.index(head)}.{rest}"] = v
    seg["up.weight"] = torch.randn(19, 1, 16, 16)
    path2 = tmp_path / "drnseg.pth"
    torch.save(seg, path2)
    model2 = DRNC26(num_classes=19, pretrained=path2)
    assert model2.load_report.loaded == len(drn.state_dict()) and model2.load_report.heads == 2
    for a, b in zip(model2.state_dict().values(), drn.state_dict().values()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- frozen BatchNorm
@pytest.mark.parametrize("which", ["deeplab", "drn"])
def test_freeze_bn(which):
    model = DeepLabV2(backbone="resnet50") if which == "deeplab" else DRNC26()
    model.freeze_bn()
    model.train()  # a later .train() (as Lightning does) must keep the BNs frozen
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    model(torch.randn(2, 3, 40, 40) * 3 + 1).mean().backward()
    for m, (mean, var) in zip(bns, before):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
    ids = {id(p) for g in model.param_groups(1e-3) for p in g["params"]}
    assert ids == {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(id(p) in ids for m in bns for p in m.parameters())


def test_bn_updates_when_not_frozen():
    model = DRNC26().train()
    before = model.backbone.bn1.running_mean.clone()
    with torch.no_grad():
        model(torch.randn(1, 3, 24, 24) + 2)
    assert not torch.equal(model.backbone.bn1.running_mean, before)


def test_download_hint_mentions_torchvision():
    hint = torchvision_download_hint()
    assert "torchvision" in hint and "ResNet101_Weights" in hint and "state_dict" in hint
