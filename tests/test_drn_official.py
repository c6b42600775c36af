"""DRN-C-26's upsampling against the official segmentation code's (fyu/drn DRNSeg): a fixed
depthwise ConvTranspose2d(C, C, 16, stride=8, padding=4, groups=C) whose kernel is the bilinear
kernel of FCN, built here from its formula; and the official weight files by name."""
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uda.models.drn import DRNC26
from uda.models.weight_formats import DRN_IMAGENET, DRN_SEG


def reference_up(classes: int) -> nn.ConvTranspose2d:
    """The official up-sampling layer: bilinear weights w[i, j] = (1 - |i/f - c|)(1 - |j/f - c|),
    f = ceil(k/2) = 8, c = (2f - 1 - f % 2) / (2f), the same for every channel."""
    up = nn.ConvTranspose2d(classes, classes, 16, stride=8, padding=4, groups=classes, bias=False)
    f, c = 8, (2 * 8 - 1 - 8 % 2) / 16
    with torch.no_grad():
        for i in range(16):
            for j in range(16):
                up.weight[:, 0, i, j] = (1 - abs(i / f - c)) * (1 - abs(j / f - c))
    return up


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return DRNC26(num_classes=5, upsample="deconv").eval()


def test_deconv_equals_the_official_upsampling(net):
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, feats = net(x, return_features=True)
        expect = reference_up(5)(net.classifier(feats["enc"]))
    assert expect.shape == logits.shape == (2, 5, 64, 96)
    torch.testing.assert_close(logits, expect, rtol=0, atol=1e-5)


def test_deconv_differs_from_bilinear_at_the_border_only(net):
    """Inside, the transposed convolution is bilinear interpolation (align_corners=False);
    within 4 pixels of the border it misses the neighbours beyond the edge."""
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        deconv = net(x)
        coarse = net.classifier(net.backbone(x))
    bilinear = F.interpolate(coarse, size=(64, 96), mode="bilinear", align_corners=False)
    diff = (deconv - bilinear).abs()
    assert diff[..., 4:-4, 4:-4].max() < 1e-5
    assert diff[..., :4, :].amax(dim=(0, 1, 3)).min() > 1e-3  # every border row differs
    assert diff[..., -4:, :].amax(dim=(0, 1, 3)).min() > 1e-3
    assert torch.allclose(deconv[..., 0, 4:-4], bilinear[..., 0, 4:-4] * 9 / 16, atol=1e-5)


def test_any_input_size_is_cropped(net):
    with torch.no_grad():
        assert net(torch.randn(1, 3, 37, 50)).shape == (1, 5, 37, 50)


def drnseg_file(model: DRNC26, path, with_up: bool = True):
    """A fyu/drn DRNSeg state dict: base = (conv1, bn1, relu, layer1..8), seg, up."""
    names = ["conv1", "bn1", None] + [f"layer{i}" for i in range(1, 9)]
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith("classifier."):
            sd["seg." + k[len("classifier."):]] = v
        else:
            top, rest = k[len("backbone."):].split(".", 1)
            sd[f"base.{names.index(top)}.{rest}"] = v
    if with_up:
        sd["up.weight"] = reference_up(model.num_classes).weight.detach()
    torch.save(sd, path)
    return path


def test_drnseg_snapshot_asks_for_deconv(net, tmp_path, caplog):
    path = drnseg_file(net, tmp_path / "drn_c_26_cityscapes.pth")
    with caplog.at_level(logging.WARNING):
        loaded = DRNC26(num_classes=5, pretrained=path, upsample="deconv")
    assert loaded.load_report.format == DRN_SEG and loaded.load_report.missing == 0
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        DRNC26(num_classes=5, pretrained=path)
    assert "model.upsample=deconv" in caplog.records[-1].getMessage()


def test_imagenet_file_is_named_and_the_classifier_warned(tmp_path, caplog):
    model = DRNC26(num_classes=5)
    sd = {k[len("backbone."):]: v for k, v in model.state_dict().items()
          if k.startswith("backbone.")}
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 512, 1, 1), torch.randn(1000)
    torch.save(sd, tmp_path / "drn_c_26-ddedf421.pth")
    with caplog.at_level(logging.WARNING, logger="uda.models.weights"):
        rep = DRNC26(num_classes=5, pretrained=tmp_path / "drn_c_26-ddedf421.pth").load_report
    assert rep.format == DRN_IMAGENET
    assert rep.uninitialised == ["classifier.weight", "classifier.bias"]
    message = caplog.records[-1].getMessage()
    assert "2 tensors" in message and "classifier.weight, classifier.bias" in message
