"""DeepLabV2 against the official AdaptSegNet/ADVENT computation, and the official weight files.

The reference network below is written from the DeepLab-v2 / ResNet description with the official
module names (``conv1``, ``bn1``, ``layer1..4`` bottlenecks, ``layer5``/``layer6`` ASPP heads
``conv2d_list``), nothing imported from their code: ``caffe`` puts layer2's stride in the first
1x1 conv, dilates every block of layer3/layer4 by 2/4 and pools with ceil_mode; ``torchvision``
puts the stride in the 3x3 conv and gives the first block of layer3/layer4 the previous dilation.
Its heads return stride-8 logits, which the official code upsamples (align_corners=True).
"""
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uda.models.deeplabv2 import DeepLabV2
from uda.models.input_convention import CAFFE_MEAN_BGR, IMAGENET_MEAN, IMAGENET_STD
from uda.models.weight_formats import CAFFE_INIT, OFFICIAL_SNAPSHOT, TORCHVISION_RESNET
from uda.models.weights import WeightsError

RESNET101, RESNET50 = (3, 4, 23, 3), (3, 4, 6, 3)
REPO = Path(__file__).resolve().parents[1]


class RefBottleneck(nn.Module):
    def __init__(self, cin, planes, stride, dilation, stride_in_1x1, project):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, stride if stride_in_1x1 else 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1 if stride_in_1x1 else stride,
                               padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.downsample = nn.Sequential(nn.Conv2d(cin, 4 * planes, 1, stride, bias=False),
                                        nn.BatchNorm2d(4 * planes)) if project else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class RefASPP(nn.Module):
    """The sum of the first ``branches`` dilated convolutions (AdaptSegNet's and DACS's code
    return inside the loop: 2)."""

    def __init__(self, cin, num_classes, branches=4):
        super().__init__()
        self.conv2d_list = nn.ModuleList(nn.Conv2d(cin, num_classes, 3, padding=d, dilation=d)
                                         for d in (6, 12, 18, 24))
        self.branches = branches

    def forward(self, x):
        return sum(conv(x) for conv in self.conv2d_list[:self.branches])


class RefDeepLabV2(nn.Module):
    """Official key layout; ``heads``: {name: input channels} (ADVENT multi-level: layer5 on
    layer3 (1024), layer6 on layer4 (2048); the Caffe init file: layer5 on layer4)."""

    def __init__(self, blocks=RESNET101, num_classes=19, layout="caffe",
                 heads=(("layer5", 1024), ("layer6", 2048)), branches=4):
        super().__init__()
        caffe = layout == "caffe"
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.pool = nn.MaxPool2d(3, 2, 1, ceil_mode=caffe)
        cin = 64
        for i, (planes, stride, dil, n) in enumerate(zip((64, 128, 256, 512), (1, 2, 1, 1),
                                                         (1, 1, 2, 4), blocks), start=1):
            first_dil = dil if caffe else max(dil // 2, 1)
            layer = [RefBottleneck(cin, planes, stride, first_dil, caffe, True)]
            layer += [RefBottleneck(4 * planes, planes, 1, dil, caffe, False) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layer))
            cin = 4 * planes
        self.head_inputs = dict(heads)
        for name, c in heads:
            setattr(self, name, RefASPP(c, num_classes, branches))

    def forward(self, x):
        """Stride-8 logits {head name: (B,C,h,w)}."""
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        f3 = self.layer3(self.layer2(self.layer1(x)))
        feats = {1024: f3, 2048: self.layer4(f3)}
        return {name: getattr(self, name)(feats[c]) for name, c in self.head_inputs.items()}


def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Random weights and BN statistics of moderate scale (outputs O(1), not the official N(0,
    0.01) init that makes every output ~0 and any comparison trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (1.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                for t, lo, hi in ((m.weight, 0.2, 0.6), (m.running_var, 0.5, 1.5)):
                    t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
                for t in (m.bias, m.running_mean):
                    t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return module.eval()


def caffe_input(u8: torch.Tensor) -> torch.Tensor:
    """The official preprocessing of an RGB uint8 image (B,3,H,W): BGR, minus the mean."""
    return u8.float().flip(1) - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)


def data_input(u8: torch.Tensor) -> torch.Tensor:
    """Our data pipeline's tensor: RGB in [0, 1], ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (u8.float() / 255 - mean) / std


def save(sd: dict, path, drop_counters: bool = True):
    torch.save({k: v for k, v in sd.items()
                if not (drop_counters and k.endswith("num_batches_tracked"))}, path)
    return path


@pytest.fixture(scope="module")
def official101(tmp_path_factory):
    """ADVENT multi-level ResNet-101 (random weights) and its snapshot in the official keys."""
    torch.manual_seed(0)
    ref = randomise(RefDeepLabV2(RESNET101), seed=1)
    return ref, save(ref.state_dict(), tmp_path_factory.mktemp("w") / "GTA2Cityscapes_advent.pth")


# ---------------------------------------------------------------------------- parity
def test_caffe_layout_equals_official_computation(official101):
    """ADVENT snapshot loaded by name: stride-8 features 17x33 at 129x257 and logits (main and
    aux, upsampled with align_corners=True) equal to the reference to 1e-5, whether the network
    gets the official BGR tensor itself or our normalised RGB tensor (converted inside)."""
    ref, path = official101
    ours = DeepLabV2(19, "resnet101", multi_level=True, pretrained=path, layout="caffe",
                     input_convention="caffe_bgr").eval()
    assert ours.load_report.format == OFFICIAL_SNAPSHOT and ours.load_report.missing == 0
    u8 = torch.randint(0, 256, (1, 3, 129, 257), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expect = {k: F.interpolate(v, size=(129, 257), mode="bilinear", align_corners=True)
                  for k, v in ref(caffe_input(u8)).items()}
        logits, feats = ours(data_input(u8), return_features=True)
        ours.input.convention = "imagenet_rgb"  # the official tensor as it is
        same_in, _ = ours(caffe_input(u8), return_features=True)
    assert feats["enc"].shape[-2:] == (17, 33)
    assert expect["layer6"].abs().max() > 1 and expect["layer5"].abs().max() > 1  # not ~0
    assert (same_in - expect["layer6"]).abs().max().item() <= 1e-6  # 0.0 on CPU
    assert (logits - expect["layer6"]).abs().max().item() <= 1e-5
    assert (feats["aux_logits"] - expect["layer5"]).abs().max().item() <= 1e-5


def test_torchvision_layout_equals_reference(tmp_path):
    """The torchvision layout against the reference built the torchvision way, weights mapped
    into our names by hand (backbone.*, classifier.convs.*), align_corners=False."""
    torch.manual_seed(0)
    ref = randomise(RefDeepLabV2(RESNET50, num_classes=5, layout="torchvision",
                                 heads=(("layer6", 2048),)), seed=3)
    mapped = {(f"classifier.convs.{k[len('layer6.conv2d_list.'):]}" if k.startswith("layer6.")
               else f"backbone.{k}"): v for k, v in ref.state_dict().items()}
    ours = DeepLabV2(5, "resnet50", pretrained=save(mapped, tmp_path / "tv.pth"),
                     layout="torchvision").eval()
    assert ours.load_report.missing == 0
    x = torch.randn(1, 3, 65, 97, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expect = F.interpolate(ref(x)["layer6"], size=(65, 97), mode="bilinear",
                               align_corners=False)
        torch.testing.assert_close(ours(x), expect, rtol=0, atol=1e-5)


def test_feature_sizes_at_512x1024():
    """65x129 (official) vs 64x128 (torchvision) stride-8 features; shapes on the meta device."""
    with torch.device("meta"):
        x = torch.empty(1, 3, 512, 1024)
        for layout, size in (("caffe", (65, 129)), ("torchvision", (64, 128))):
            _, feats = DeepLabV2(19, "resnet101", layout=layout)(x, return_features=True)
            assert feats["enc"].shape == (1, 2048, *size)


def test_caffe_layout_evaluation_upsamples_once_as_advent():
    """ADVENT / AdaptSegNet / DACS evaluation: nn.Upsample(label size, align_corners=True) on
    the stride-8 logits, in one step. The caffe layout's evaluation computes exactly that (also
    with flip); the torchvision layout keeps logits at input size, then align_corners=False."""
    from uda.evaluation.inference import predict_probs
    x = torch.randn(2, 3, 33, 65, generator=torch.Generator().manual_seed(7))
    label_size = (64, 128)
    caffe, tv = (DeepLabV2(3, "resnet50", layout=layout).eval() for layout in ("caffe", "torchvision"))
    def advent_eval(images):
        stride8 = caffe.classifier(caffe(images, return_features=True)[1]["enc"])  # 5x9
        assert stride8.shape[-2:] == (5, 9)
        return F.interpolate(stride8, size=label_size, mode="bilinear", align_corners=True)

    with torch.no_grad():
        advent, advent_flipped = advent_eval(x), advent_eval(x.flip(-1)).flip(-1)
        two_steps = F.interpolate(caffe(x), size=label_size, mode="bilinear", align_corners=False)
        tv_two_steps = F.interpolate(tv(x), size=label_size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(predict_probs(caffe, x, label_size, num_classes=3),
                               advent.softmax(1), rtol=0, atol=1e-6)
    torch.testing.assert_close(predict_probs(caffe, x, label_size, flip=True, num_classes=3),
                               (advent.softmax(1) + advent_flipped.softmax(1)) / 2, rtol=0, atol=1e-6)
    assert (two_steps.softmax(1) - advent.softmax(1)).abs().max() > 1e-4  # what it replaced
    assert torch.equal(predict_probs(tv, x, label_size, num_classes=3), tv_two_steps.softmax(1))


def test_caffe_layout_modules():
    m = DeepLabV2(3, "resnet50", layout="caffe").backbone
    assert m.maxpool.ceil_mode and m.layer2[0].conv1.stride == (2, 2)
    assert m.layer2[0].conv2.stride == (1, 1) and m.layer2[0].downsample[0].stride == (2, 2)
    for layer, d in ((m.layer3, 2), (m.layer4, 4)):
        assert {(b.conv2.dilation, b.conv2.padding) for b in layer} == {((d, d), (d, d))}


def test_input_convention_is_the_caffe_preprocessing():
    u8 = torch.randint(0, 256, (2, 3, 5, 7), generator=torch.Generator().manual_seed(5))
    net = DeepLabV2(3, "resnet50", input_convention="caffe_bgr")
    torch.testing.assert_close(net.input(data_input(u8)), caffe_input(u8), rtol=0, atol=1e-4)
    assert net.input.state_dict() == {}  # nothing stored: checkpoints are unchanged


# ---------------------------------------------------------------------------- weight files
def init_file(path, blocks=RESNET101):
    """A file in the exact DeepLab_resnet_pretrained_init layout: 'Scale.' + the Caffe
    Res_Deeplab names, its 2048-input layer5 head (21 classes), no BN counters."""
    torch.manual_seed(0)
    ref = randomise(RefDeepLabV2(blocks, num_classes=21, heads=(("layer5", 2048),)), seed=6)
    return ref, save({f"Scale.{k}": v for k, v in ref.state_dict().items()}, path)


def test_caffe_init_loads_through_model_pretrained(tmp_path, caplog):
    """Acceptance: the real config (layout caffe) with model.pretrained=<init file>: every backbone
    tensor comes from the file, the head is left out (warned, by name), the format is named."""
    from uda import build
    from uda.config import load_config
    from uda.run_summary import model_text
    ref, path = init_file(tmp_path / "DeepLab_resnet_pretrained_init-f81d91e8.pth")
    cfg = load_config(REPO / "configs/gta5_cityscapes/adversarial.yaml",
                      ["data.source.root=/s", "data.target.root=/t", f"model.pretrained={path}"])
    with caplog.at_level(logging.INFO, logger="uda.models.weights"):
        net = build.build_segmenter(cfg)
    rep = net.load_report
    backbone = [k for k in net.backbone.state_dict() if not k.endswith("num_batches_tracked")]
    assert rep.format == CAFFE_INIT and rep.backbone == len(backbone) == 520 and rep.heads == 0
    assert rep.uninitialised == [k for k in net.state_dict() if "classifier" in k]  # 16: heads
    assert rep.unused == 8  # Scale.layer5.conv2d_list.{0..3}.{weight,bias}
    for k in ("conv1.weight", "layer4.2.bn3.running_var", "layer2.0.downsample.0.weight"):
        assert torch.equal(net.backbone.state_dict()[k], ref.state_dict()[k])
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("DeepLab_resnet_pretrained_init" in m and "520" in m for m in info)
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "16 tensors" in warning[0]
    assert "classifier.convs.0.weight" in warning[0] and "aux_classifier.convs.3.bias" in warning[0]
    text = model_text(cfg, rep.summary())  # the run's start line
    assert text.startswith("deeplabv2 resnet101 (caffe layout, caffe_bgr input), multi-level")
    assert f"({CAFFE_INIT}: 520 tensors loaded, 16 module tensors left as initialised)" in text


def test_snapshot_heads_load_when_the_class_count_matches(official101, caplog):
    _, path = official101
    net = DeepLabV2(19, "resnet101", multi_level=True, pretrained=path, layout="caffe",
                    input_convention="caffe_bgr")
    assert net.load_report.heads == 16 and net.load_report.uninitialised == []
    with caplog.at_level(logging.WARNING, logger="uda.models.weights"):
        other = DeepLabV2(7, "resnet101", multi_level=True, pretrained=path, layout="caffe",
                          input_convention="caffe_bgr")
    assert other.load_report.heads == 0 and len(other.load_report.shape_mismatch) == 16
    assert "classifier.convs.2.weight" in caplog.records[-1].getMessage()


def test_dacs_snapshot_two_branch_heads(tmp_path):
    """DACS's single-level Res_Deeplab names its only (2048-input) head layer5 and, like
    AdaptSegNet's, sums two ASPP branches: aspp_branches=2 reproduces it; the other two branches
    are loaded but frozen (no gradient there either)."""
    torch.manual_seed(0)
    ref = randomise(RefDeepLabV2(RESNET50, num_classes=4, heads=(("layer5", 2048),), branches=2),
                    seed=7)
    net = DeepLabV2(4, "resnet50", pretrained=save(ref.state_dict(), tmp_path / "dacs.pth"),
                    layout="caffe", input_convention="caffe_bgr", aspp_branches=2).eval()
    assert net.load_report.format == OFFICIAL_SNAPSHOT and net.load_report.heads == 8
    assert torch.equal(net.classifier.convs[3].weight, ref.layer5.conv2d_list[3].weight)
    x = torch.randn(1, 3, 41, 57, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expect = F.interpolate(ref(net.input(x))["layer5"], size=(41, 57), mode="bilinear",
                               align_corners=True)
        torch.testing.assert_close(net(x), expect, rtol=0, atol=1e-5)
        four = DeepLabV2(4, "resnet50", layout="caffe", input_convention="caffe_bgr",
                         pretrained=tmp_path / "dacs.pth").eval()
        assert (four(x) - expect).abs().max() > 0.1  # the four-branch head is another function
    trained = {id(p) for g in net.param_groups(1e-3) for p in g["params"]}
    assert [id(c.weight) in trained for c in net.classifier.convs] == [True, True, False, False]


@pytest.mark.parametrize("layout, convention, file, fix", [
    ("torchvision", "imagenet_rgb", "official",
     "set model.layout=caffe model.input_convention=caffe_bgr"),
    ("caffe", "imagenet_rgb", "official", "set model.input_convention=caffe_bgr"),
    ("caffe", "caffe_bgr", "torchvision",
     "set model.layout=torchvision model.input_convention=imagenet_rgb"),
])
def test_weights_of_another_layout_are_refused(tmp_path, layout, convention, file, fix):
    import torchvision
    torch.manual_seed(0)
    if file == "official":
        sd = RefDeepLabV2(RESNET50, heads=(("layer6", 2048),)).state_dict()
    else:
        sd = torchvision.models.resnet50(weights=None).state_dict()
    path = save(sd, tmp_path / f"{file}.pth")
    with pytest.raises(WeightsError, match=f"{file}.pth") as e:
        DeepLabV2(19, "resnet50", pretrained=path, layout=layout, input_convention=convention)
    assert str(e.value).endswith(fix)
    name = OFFICIAL_SNAPSHOT if file == "official" else TORCHVISION_RESNET
    assert name in str(e.value)


def test_run_checkpoint_says_its_layout(tmp_path):
    """A warm start from a run trained in the torchvision layout is refused by a caffe network
    (the run's config, stored in the checkpoint, says the layout)."""
    net = DeepLabV2(3, "resnet50")
    ckpt = {"state_dict": {f"segmenter.{k}": v for k, v in net.state_dict().items()},
            "uda": {"step": 7, "config": "model:\n  name: deeplabv2\n  layout: torchvision\n"}}
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(WeightsError, match="run checkpoint .iteration 7.* model.layout=torchvision"):
        DeepLabV2(3, "resnet50", pretrained=path, layout="caffe")
    assert DeepLabV2(3, "resnet50", pretrained=path).load_report.missing == 0


@pytest.mark.parametrize("override, message", [
    ("model.layout=caffee", "model.layout='caffee' is not one of torchvision, caffe"),
    ("model.input_convention=bgr", "model.input_convention='bgr' is not one of"),
    ("model.aspp_branches=5", "model.aspp_branches must be 1..4"),
    ("data.eval_transform.std=[1,1,1]", "data.eval_transform must share mean and std"),
])
def test_model_options_are_checked_at_load(override, message):
    from uda.config import ConfigError, load_config
    extra = ["model.name=deeplabv2", "model.input_convention=caffe_bgr", override]
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(REPO / "configs/toy/source_only.yaml",
                    ["data.source.root=/s", "data.target.root=/t", *extra])
