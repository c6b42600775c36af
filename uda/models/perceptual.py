"""Frozen feature network for perceptual content and Gram-style losses.

PerceptualNet(x) takes images (B, 3, H, W) in [-1, 1] (the translator convention), converts them
to ImageNet normalisation inside, and returns {layer_name: (B, C, h, w)} for exactly the layers
asked for (content_layer and style_layers), computing nothing past the deepest one.

kind="vgg19": torchvision vgg19 features with the usual names relu1_1 ... relu5_4. Weights are
read from a local file (never downloaded): a torchvision vgg19 state dict ("features.N.*", the
classifier is ignored) or a features-only one ("N.*"). Without weights the network is random and
a warning says so: a randomly initialised VGG is not a perceptual metric.

kind="lite": a small conv net with a fixed-seed random initialisation, for CPU and toy runs.
These are random features, not a learned perceptual metric; random conv features still carry
colour and local texture statistics, which is exactly what the toy benchmark's domain shift is.
It provides relu1_1 .. relu4_1 (channels 16, 32, 64, 128; one 2x pooling before each but the
first), so the same layer names work for both kinds.

The network is frozen: parameters never require grad, and it stays in eval mode even when a
parent module calls .train() (gradients still flow to the input image).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_CHANNELS = {"relu1_1": 16, "relu2_1": 32, "relu3_1": 64, "relu4_1": 128}
_LITE_SEED = 1234


def _vgg19_features() -> tuple[nn.Sequential, dict[str, int], dict[str, int]]:
    """torchvision vgg19 features (random init) + {relu name: index} + {relu name: channels}."""
    # make_layers(cfgs["E"]) is exactly torchvision's vgg19().features; building it alone skips
    # the 120M-parameter classifier (seconds and ~0.5 GB per construction on CPU).
    from torchvision.models.vgg import cfgs, make_layers
    feats = make_layers(cfgs["E"], batch_norm=False)
    for m in feats.modules():  # torchvision's VGG init, so a random VGG matches vgg19(weights=None)
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    names, channels, block, conv, last_c = {}, {}, 1, 0, 3
    for i, layer in enumerate(feats):
        if isinstance(layer, nn.Conv2d):
            conv, last_c = conv + 1, layer.out_channels
        elif isinstance(layer, nn.ReLU):
            names[f"relu{block}_{conv}"] = i
            channels[f"relu{block}_{conv}"] = last_c
        elif isinstance(layer, nn.MaxPool2d):
            block, conv = block + 1, 0
    return feats, names, channels


def _lite_features() -> tuple[nn.Sequential, dict[str, int], dict[str, int]]:
    # A private generator keeps the init identical across runs; fork_rng keeps the global RNG
    # untouched by nn.Conv2d's own default init (overwritten below), so building this network
    # (e.g. the translation-quality metric during training) does not change a run's randomness.
    with torch.random.fork_rng(devices=[]):
        return _lite_features_unforked()


def _lite_features_unforked() -> tuple[nn.Sequential, dict[str, int], dict[str, int]]:
    g = torch.Generator().manual_seed(_LITE_SEED)
    layers: list[nn.Module] = []
    names, cin = {}, 3
    for k, (name, cout) in enumerate(LITE_CHANNELS.items()):
        if k:
            layers.append(nn.AvgPool2d(2))
        conv = nn.Conv2d(cin, cout, 3, 1, 1)
        with torch.no_grad():  # He init: keeps activations at a similar scale across layers
            std = (2.0 / (cin * 9)) ** 0.5
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * std)
            conv.bias.zero_()
        layers += [conv, nn.ReLU(inplace=True)]
        names[name] = len(layers) - 1
        cin = cout
    return nn.Sequential(*layers), names, dict(LITE_CHANNELS)


def _load_vgg19(feats: nn.Sequential, path: str) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {k[len("features."):] if k.startswith("features.") else k: v
             for k, v in state.items() if not k.startswith("classifier.")}
    expected = set(feats.state_dict())
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"{path} is not a vgg19 state dict: missing keys {missing[:6]}, "
                         f"unexpected keys {extra[:6]}")
    try:
        feats.load_state_dict(state)
    except RuntimeError as e:  # shape mismatch
        raise ValueError(f"{path}: cannot load into vgg19 features: {e}") from e


class PerceptualNet(nn.Module):
    """Frozen perceptual feature extractor; see the module docstring.

    forward(x (B, 3, H, W) in [-1, 1]) -> {name: features} for the names in
    `layers` = (content_layer, *style_layers) without duplicates; `channels[name]` gives their
    channel counts. `is_pretrained` is True only for vgg19 with loaded weights. An unknown kind,
    an unknown layer name or an unusable weights file raise ValueError.
    """

    def __init__(self, kind: str = "vgg19", content_layer: str = "relu4_1",
                 style_layers: Sequence[str] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1"),
                 weights: Optional[str] = None):
        super().__init__()
        if kind == "vgg19":
            feats, index, channels = _vgg19_features()
            if weights is not None:
                _load_vgg19(feats, str(Path(weights)))
            else:
                warnings.warn("PerceptualNet(kind='vgg19') has no weights: a randomly initialised "
                              "VGG19 is not a perceptual metric; pass weights=<local vgg19 state "
                              "dict> or use kind='lite' for toy runs", UserWarning, stacklevel=2)
        elif kind == "lite":
            if weights is not None:
                raise ValueError("kind='lite' is a fixed random-feature network; "
                                 "it takes no weights")
            feats, index, channels = _lite_features()
        else:
            raise ValueError(f"unknown perceptual kind {kind!r}; expected 'vgg19' or 'lite'")
        self.kind = kind
        self.is_pretrained = kind == "vgg19" and weights is not None
        self.content_layer = content_layer
        self.style_layers = tuple(style_layers)
        self.layers = tuple(dict.fromkeys((content_layer, *self.style_layers)))
        unknown = [n for n in self.layers if n not in index]
        if unknown:
            raise ValueError(f"{kind} has no layer(s) {unknown}; available: {list(index)}")
        self.channels = {n: channels[n] for n in self.layers}
        self._index = {index[n]: n for n in self.layers}
        self.features = feats[: max(self._index) + 1]  # nothing past the deepest needed layer
        # Non-persistent: the constants are not weights and stay out of parent checkpoints.
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "PerceptualNet":
        # Always eval: a frozen metric must not change with the parent's mode (VGG has no BN or
        # dropout in features today, but this keeps the contract independent of that).
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = ((x + 1.0) * 0.5 - self.mean) / self.std
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._index:
                # The next layer is a conv or pool (never in place), so x is not overwritten.
                out[self._index[i]] = x
        return out
