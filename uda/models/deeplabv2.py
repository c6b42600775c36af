"""DeepLab-v2 (ResNet-101 / ResNet-50, output stride 8, ASPP classifier) as used by the
GTA5 -> Cityscapes UDA literature (AdaptSegNet, ADVENT, ...), built on torchvision's ResNet.

Contract (shared by every segmenter in `uda.models`):
- ``forward(x)``: ``x`` (B,3,H,W) float, ImageNet-normalised RGB -> logits (B,num_classes,H,W)
  float, bilinearly upsampled (align_corners=False) to the input size, any H, W;
- ``forward(x, return_features=True)`` -> ``(logits, feats)`` with ``feats["enc"]`` the layer4
  output (B,2048,ceil(H/8),ceil(W/8)) and, when ``multi_level=True``, ``feats["aux_logits"]``
  (B,num_classes,H,W): the layer3 ASPP head at input size (AdaptSegNet's multi-level adaptation);
- ``param_groups(lr)`` -> optimizer groups: backbone at ``lr``, the new heads at ``10 * lr``;
- ``num_classes`` attribute.

Pretrained weights are loaded from local files by `uda.models.weights.load_matching_weights`.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from uda.models.backbone import BackboneSegmenter
from uda.models.weights import LoadReport, load_matching_weights

_BACKBONES = {"resnet101": torchvision.models.resnet101, "resnet50": torchvision.models.resnet50}
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
        f"Note: the UDA literature's DeepLab-v2 numbers start from Caffe-converted ResNet-101 "
        f"weights (stride in the 1x1 conv, BGR input), a different layout from torchvision's.")


# ----------------------------------------------------------------------------------------------
# network
# ----------------------------------------------------------------------------------------------
class ASPPClassifier(nn.Module):
    """DeepLab-v2 ASPP head: the sum of parallel 3x3 convolutions (with bias) of the given
    dilations (padding = dilation, so the spatial size is kept), each in_channels -> num_classes.
    Weights ~ N(0, 0.01), biases 0. (B,in_channels,h,w) -> (B,num_classes,h,w)."""

    def __init__(self, in_channels: int, num_classes: int,
                 dilations: tuple[int, ...] = ASPP_DILATIONS):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True)
            for d in dilations)
        for conv in self.convs:
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out


def _upsample(t: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


class DeepLabV2(BackboneSegmenter):
    """DeepLab-v2: torchvision ResNet (``weights=None``; layer3/layer4 dilated 2/4, output stride 8)
    + ASPP classifier (dilations 6/12/18/24) on layer4; with ``multi_level=True`` a second ASPP
    head on layer3 (1024 channels) gives ``feats["aux_logits"]``.

    Args:
        num_classes: output channels (19 for Cityscapes).
        backbone: "resnet101" (the reference) or "resnet50" (tests, speed).
        multi_level: add the layer3 head (AdaptSegNet multi-level).
        pretrained: path of a local state dict, either a torchvision ResNet ImageNet state dict
            (``fc.*`` ignored) or a state dict of this class (possibly inside a Lightning
            checkpoint, under ``segmenter.``/``module.``); see `load_pretrained`.

    Note: torchvision's dilation puts the previous level's dilation in the first block of
    layer3/layer4 (1 then 2) and the stride in the 3x3 conv; the Caffe DeepLab-v2 uses dilation 2/4
    in every block and the stride in the 1x1 conv. Parameter counts are identical.
    """

    def __init__(self, num_classes: int = 19, backbone: str = "resnet101",
                 multi_level: bool = False, pretrained: str | Path | None = None):
        super().__init__()
        if backbone not in _BACKBONES:
            raise ValueError(f"backbone={backbone!r} is not available; choose one of "
                             f"{sorted(_BACKBONES)}")
        self.num_classes = num_classes
        self.backbone_name = backbone
        self.multi_level = multi_level
        net = _BACKBONES[backbone](weights=None, replace_stride_with_dilation=[False, True, True])
        net.fc = nn.Identity()        # classification head unused (no parameters kept)
        net.avgpool = nn.Identity()
        self.backbone = net
        self.classifier = ASPPClassifier(2048, num_classes)
        self.aux_classifier = ASPPClassifier(1024, num_classes) if multi_level else None
        self.load_report: LoadReport | None = None
        if pretrained is not None:
            self.load_report = self.load_pretrained(pretrained)

    # -- weights ---------------------------------------------------------------------------
    def load_pretrained(self, path: str | Path) -> LoadReport:
        """Load every matching tensor (name and shape) from a local file: torchvision ResNet keys
        (``conv1.weight``, ``layer1.0...``; ``fc.*`` ignored) go to the backbone; keys of this
        class (``backbone.*``, ``classifier.*``, ``aux_classifier.*``) load as they are, so a
        saved DeepLabV2 also restores its heads when their shapes match (a head saved with another
        number of classes is skipped). Returns a `LoadReport` (``.loaded`` tensors); raises
        FileNotFoundError / ValueError naming the file when it is missing or nothing matches."""
        def candidates(key: str):
            return (key, "backbone." + key)

        def ignore(key: str) -> bool:
            return key.startswith(("fc.", "backbone.fc."))

        return load_matching_weights(self, path, candidates, ignore=ignore)

    def heads(self) -> list[nn.Module]:
        """The newly initialised modules (10x learning rate)."""
        return [self.classifier] + ([self.aux_classifier] if self.aux_classifier else [])

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, return_features: bool = False):
        size = x.shape[-2:]
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        x = b.layer2(b.layer1(x))
        f3 = b.layer3(x)
        f4 = b.layer4(f3)
        logits = _upsample(self.classifier(f4), size)
        if not return_features:
            return logits
        feats = {"enc": f4}
        if self.aux_classifier is not None:
            feats["aux_logits"] = _upsample(self.aux_classifier(f3), size)
        return logits, feats
