"""DeepLab-v2 (ResNet-101 / ResNet-50, output stride 8, ASPP classifier) as used by the
GTA5 -> Cityscapes UDA literature (AdaptSegNet, ADVENT, DACS, ...), built on torchvision's ResNet
in one of two layouts (same parameters, same names, different computation):

- ``caffe``: the official DeepLab-v2 ResNet of AdaptSegNet / ADVENT / DACS (Caffe ``Res_Deeplab``):
  layer2's stride in its first 1x1 conv, every block of layer3 / layer4 dilated 2 / 4, max-pool
  with ``ceil_mode=True`` (512x1024 -> 65x129 features); logits upsampled with
  ``align_corners=True`` as the official code does. The layout of their weights and snapshots.
- ``torchvision``: torchvision's ResNet with ``replace_stride_with_dilation``: layer2's stride in
  the 3x3 conv, the first blocks of layer3 / layer4 dilated 1 / 2, ``ceil_mode=False`` (512x1024
  -> 64x128); ``align_corners=False``. The layout of torchvision's ImageNet weights.

Contract (shared by every segmenter in `uda.models`):
- ``forward(x)``: ``x`` (B,3,H,W) float, normalised as the data pipeline does (``input_mean`` /
  ``input_std``; converted inside to ``input_convention``, see `uda.models.input_convention`) ->
  logits (B,num_classes,H,W) float, bilinearly upsampled to the input size, any H, W;
  ``forward(x, out_size=(H', W'))``: the stride-8 logits upsampled to (H', W') in one step.
  ``one_step_upsampling`` (True in the caffe layout) asks evaluation for that at the label size,
  as the official AdaptSegNet / ADVENT / DACS evaluation does (`uda.evaluation.inference`);
- ``forward(x, return_features=True)`` -> ``(logits, feats)`` with ``feats["enc"]`` the layer4
  output (B,2048,~H/8,~W/8) and, when ``multi_level=True``, ``feats["aux_logits"]``
  (B,num_classes,H,W): the layer3 ASPP head at input size (AdaptSegNet's multi-level adaptation);
- ``param_groups(lr)`` -> optimizer groups: backbone at ``lr``, the new heads at ``10 * lr``;
- ``num_classes`` attribute.

Pretrained weights are loaded from local files in the formats of `uda.models.weight_formats`.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from uda.models.backbone import BackboneSegmenter
from uda.models.input_convention import IMAGENET_MEAN, IMAGENET_STD, InputConvention
from uda.models.weight_formats import check_format, deeplab_format
from uda.models.weights import LoadReport, load_weights

_BACKBONES = {"resnet101": torchvision.models.resnet101, "resnet50": torchvision.models.resnet50}
LAYOUTS = ("torchvision", "caffe")
ASPP_DILATIONS = (6, 12, 18, 24)


def torchvision_download_hint(backbone: str = "resnet101") -> str:
    """How a user can obtain ImageNet weights for the DeepLabV2 backbone with torchvision (a
    text; this module never downloads anything)."""
    enum = {"resnet101": "ResNet101_Weights", "resnet50": "ResNet50_Weights"}.get(backbone,
                                                                               "ResNet101_Weights")
    return (
        f"On a machine with internet access, save torchvision's ImageNet {backbone} weights once:\n"
        f"    python -c \"import torch, torchvision; "
        f"m = torchvision.models.{backbone}(weights=torchvision.models.{enum}.IMAGENET1K_V1); "
        f"torch.save(m.state_dict(), '{backbone}_imagenet.pth')\"\n"
        f"then pass the file: DeepLabV2(backbone='{backbone}', pretrained='{backbone}_imagenet.pth')"
        f" (fc.* is ignored). torchvision caches downloads under $TORCH_HOME/hub/checkpoints "
        f"(default ~/.cache/torch); those .pth files are plain state dicts and load directly. "
        f"These weights need layout='torchvision' (model.layout=torchvision "
        f"model.input_convention=imagenet_rgb). Note: the UDA literature's DeepLab-v2 numbers "
        f"start from DeepLab_resnet_pretrained_init-f81d91e8.pth (layout='caffe', BGR input).")


# ----------------------------------------------------------------------------------------------
# network
# ----------------------------------------------------------------------------------------------
class ASPPClassifier(nn.Module):
    """DeepLab-v2 ASPP head: the sum of parallel 3x3 convolutions (with bias) of the given
    dilations (padding = dilation, so the spatial size is kept), each in_channels -> num_classes.
    Weights ~ N(0, 0.01), biases 0. (B,in_channels,h,w) -> (B,num_classes,h,w).

    ``branches``: how many of the convolutions are summed (the first ones). AdaptSegNet's and
    DACS's code return inside the summing loop, so their heads use the dilation-6 and -12 branches
    only (``branches=2``); the others keep their initial weights (frozen here, as they get no
    gradient there) and stay in the state dict, so their snapshots load either way."""

    def __init__(self, in_channels: int, num_classes: int,
                 dilations: tuple[int, ...] = ASPP_DILATIONS, branches: int | None = None):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True)
            for d in dilations)
        self.branches = len(dilations) if branches is None else branches
        if not 1 <= self.branches <= len(dilations):
            raise ValueError(f"aspp_branches={branches} must be in 1..{len(dilations)}")
        for i, conv in enumerate(self.convs):
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)
            conv.requires_grad_(i < self.branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs[0](x)
        for conv in self.convs[1:self.branches]:
            out = out + conv(x)
        return out


def to_caffe_layout(net: torchvision.models.ResNet) -> None:
    """Turn a torchvision ResNet built with ``replace_stride_with_dilation=[False, True, True]``
    into the Caffe DeepLab-v2 layout, in place (no parameter changes shape or name)."""
    net.maxpool.ceil_mode = True
    first = net.layer2[0]
    first.conv1.stride, first.conv2.stride = (2, 2), (1, 1)
    for layer, d in ((net.layer3, 2), (net.layer4, 4)):
        layer[0].conv2.dilation = layer[0].conv2.padding = (d, d)


class DeepLabV2(BackboneSegmenter):
    """DeepLab-v2: ResNet (output stride 8, ``layout`` caffe or torchvision: module docstring)
    + ASPP classifier (dilations 6/12/18/24) on layer4; with ``multi_level=True`` a second ASPP
    head on layer3 (1024 channels) gives ``feats["aux_logits"]``.

    Args:
        num_classes: output channels (19 for Cityscapes).
        backbone: "resnet101" (the reference) or "resnet50" (tests, speed).
        multi_level: add the layer3 head (AdaptSegNet multi-level).
        pretrained: path of a local weights file in a format of `uda.models.weight_formats`;
            see `load_pretrained`.
        layout: "caffe" (official AdaptSegNet/ADVENT/DACS layout) or "torchvision".
        input_convention: what the weights expect ("imagenet_rgb" or "caffe_bgr");
            ``input_mean`` / ``input_std``: the data pipeline's normalisation of ``x``.
        aspp_branches: ASPP convolutions summed per head (4; 2 = AdaptSegNet's and DACS's
            code, see `ASPPClassifier`).
    """

    def __init__(self, num_classes: int = 19, backbone: str = "resnet101",
                 multi_level: bool = False, pretrained: str | Path | None = None,
                 layout: str = "torchvision", input_convention: str = "imagenet_rgb",
                 input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD, aspp_branches: int = 4):
        super().__init__()
        if backbone not in _BACKBONES:
            raise ValueError(f"backbone={backbone!r} is not available; choose one of "
                             f"{sorted(_BACKBONES)}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout={layout!r} is not one of {', '.join(LAYOUTS)}")
        self.num_classes = num_classes
        self.backbone_name = backbone
        self.multi_level = multi_level
        self.layout = layout
        self.one_step_upsampling = layout == "caffe"
        self.input = InputConvention(input_convention, input_mean, input_std)
        net = _BACKBONES[backbone](weights=None, replace_stride_with_dilation=[False, True, True])
        net.fc = nn.Identity()        # classification head unused (no parameters kept)
        net.avgpool = nn.Identity()
        if layout == "caffe":
            to_caffe_layout(net)
        self.backbone = net
        self.classifier = ASPPClassifier(2048, num_classes, branches=aspp_branches)
        self.aux_classifier = ASPPClassifier(1024, num_classes, branches=aspp_branches) \
            if multi_level else None
        self.load_report: LoadReport | None = None
        if pretrained is not None:
            self.load_report = self.load_pretrained(pretrained)

    # -- weights ---------------------------------------------------------------------------
    def load_pretrained(self, path: str | Path) -> LoadReport:
        """Load every matching tensor (mapped name and shape) from a local file in one of the
        formats of `uda.models.weight_formats` (detected from its keys, named in the report):
        the Caffe DeepLab-v2 initialisation (``Scale.*``; its head skipped), AdaptSegNet / ADVENT
        / DACS snapshots (heads loaded when the class count matches), torchvision ResNet
        (``fc.*`` ignored), this class's own state dict or run checkpoint. Returns a `LoadReport`;
        raises FileNotFoundError / ValueError naming the file when it is missing, nothing
        matches, or the file's layout / input convention differs from this network's."""
        def check(fmt) -> None:
            check_format(fmt, path, layout=self.layout, input_convention=self.input.convention)

        return load_weights(self, path, deeplab_format, check)

    def heads(self) -> list[nn.Module]:
        """The newly initialised modules (10x learning rate)."""
        return [self.classifier] + ([self.aux_classifier] if self.aux_classifier else [])

    # -- forward -------------------------------------------------------------------------------
    def _upsample(self, t: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(t, size=size, mode="bilinear",
                             align_corners=self.layout == "caffe")

    def forward(self, x: torch.Tensor, return_features: bool = False, out_size=None):
        size = x.shape[-2:] if out_size is None else tuple(out_size)
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(self.input(x)))))
        x = b.layer2(b.layer1(x))
        f3 = b.layer3(x)
        f4 = b.layer4(f3)
        logits = self._upsample(self.classifier(f4), size)
        if not return_features:
            return logits
        feats = {"enc": f4}
        if self.aux_classifier is not None:
            feats["aux_logits"] = self._upsample(self.aux_classifier(f3), size)
        return logits, feats
