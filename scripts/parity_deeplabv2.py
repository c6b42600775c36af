#!/usr/bin/env python
"""Measure our DeepLabV2 against an official model class (a measurement, not a test).

--official is a checkout of one of the official repositories (nothing of them is copied here):
github.com/valeoai/ADVENT (advent/model/deeplabv2.py, `get_deeplab_v2`, multi-level),
github.com/wasidennis/AdaptSegNet (model/deeplab_multi.py, `DeeplabMulti`) or
github.com/vikolss/DACS (model/deeplabv2.py, `Res_Deeplab`, single head). The script builds their
DeepLab-v2 ResNet-101 for 19 classes, gives it random weights of moderate scale (their own init,
N(0, 0.01) convolutions, makes every output ~0) and eval mode, saves its state dict as their code
saves snapshots, loads that file into our DeepLabV2 (layout=caffe, input_convention=caffe_bgr,
aspp_branches as their code computes) through the format detection, and compares on random
uint8 images:

- theirs: BGR minus the Caffe mean -> stride-8 logits, upsampled to the input size with
  align_corners=True (as their training and evaluation code do);
- ours: the same image normalised as our data pipeline does (RGB, ImageNet mean/std), converted
  inside the network; and, to isolate the network, their input tensor itself.

Also shown: our torchvision layout, and our 4-branch ASPP, with the same weights.

  python scripts/parity_deeplabv2.py --official /path/to/ADVENT [--sizes 129x257 512x1024]
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from uda.models.deeplabv2 import DeepLabV2  # noqa: E402
from uda.models.input_convention import CAFFE_MEAN_BGR, IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


# repository: (file, constructor, multi-level, ASPP branches their forward sums)
OFFICIAL = {
    "ADVENT": ("advent/model/deeplabv2.py", lambda m: m.get_deeplab_v2(19, multi_level=True),
               True, 4),
    "AdaptSegNet": ("model/deeplab_multi.py", lambda m: m.DeeplabMulti(num_classes=19), True, 2),
    "DACS": ("model/deeplabv2.py", lambda m: m.Res_Deeplab(num_classes=19), False, 2),
}


def official_model(root: Path):
    """(name, their model, multi-level, ASPP branches) from the checkout at ``root``, or None."""
    for name, (file, build, multi_level, branches) in OFFICIAL.items():
        if (root / file).is_file():
            spec = importlib.util.spec_from_file_location(f"official_{name}", root / file)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return name, build(module), multi_level, branches
    return None


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights ~ N(0, 1/fan_in), BN scales U(0.2, 0.6), variances U(0.5, 1.5), shifts N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan_in ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.4 + 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
    return model.eval()


def inputs(size: tuple[int, int], seed: int):
    """(ADVENT's tensor, ours) for one random RGB uint8 image."""
    u8 = torch.randint(0, 256, (1, 3, *size), generator=torch.Generator().manual_seed(seed)).float()
    caffe = u8.flip(1) - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    ours = (u8 / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return caffe, ours


def compare(official, ours, others, size, seed, device) -> str:
    caffe, rgb = (t.to(device) for t in inputs(size, seed))
    with torch.no_grad():
        out = official(caffe)
        aux, main = (F.interpolate(t, size=size, mode="bilinear", align_corners=True)
                     if t is not None else None for t in (out if isinstance(out, tuple)
                                                          else (None, out)))
        logits, feats = ours(rgb, return_features=True)
        ours.input.convention = "imagenet_rgb"
        same_in = ours(caffe)
        ours.input.convention = "caffe_bgr"
        other = {name: net(caffe) for name, net in others.items()}
    d = lambda a, b: f"{(a - b).abs().max().item():.3g}"  # noqa: E731
    aux_text = f", aux {d(feats['aux_logits'], aux)}" if aux is not None else ""
    return (f"{size[0]}x{size[1]}: features {tuple(feats['enc'].shape[-2:])}; max|their main| "
            f"{main.abs().max().item():.3f}; max abs diff main {d(logits, main)}{aux_text} (our "
            f"RGB input converted inside), main {d(same_in, main)} (their input tensor); same "
            f"weights, " + ", ".join(f"{k}: {d(v, main)}" for k, v in other.items()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--official", type=Path, required=True,
                   help="ADVENT checkout (or its advent/model/deeplabv2.py)")
    p.add_argument("--sizes", nargs="+", default=["129x257", "512x1024"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    found = official_model(args.official)
    if found is None:
        print(f"parity_deeplabv2: skipped: no official DeepLab-v2 code at {args.official} (pass a "
              f"checkout of ADVENT, AdaptSegNet or DACS: one of "
              f"{', '.join(f for f, *_ in OFFICIAL.values())})")
        return 0
    name, official, multi_level, branches = found
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    official = randomise(official, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = Path(tmp) / f"{name}_DeepLabv2_random.pth"
        torch.save(official.state_dict(), snapshot)  # as their code saves snapshots
        ours = DeepLabV2(19, "resnet101", multi_level=multi_level, pretrained=snapshot,
                         layout="caffe", input_convention="caffe_bgr",
                         aspp_branches=branches).eval()
    others = {"torchvision layout": DeepLabV2(19, "resnet101", multi_level=multi_level,
                                              aspp_branches=branches)}
    if branches != 4:
        others["4 ASPP branches"] = DeepLabV2(19, "resnet101", multi_level=multi_level,
                                              layout="caffe")
    for net in others.values():
        net.load_state_dict(ours.state_dict())
        net.eval()
    rep = ours.load_report
    print(f"{name} ({args.official}): loaded {rep.loaded} tensors ({rep.format}); {rep.missing} "
          f"left as initialised; aspp_branches={branches}")
    for model in (official, ours, *others.values()):
        model.to(args.device)
    for i, text in enumerate(args.sizes):
        h, w = (int(v) for v in text.split("x"))
        print(compare(official, ours, others, (h, w), args.seed + 1 + i, args.device), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
