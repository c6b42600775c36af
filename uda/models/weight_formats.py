"""The weight files the segmenters know, detected from their keys and mapped onto our names.

DeepLabV2 (`deeplab_format`), by the first rule that holds:

- keys ``Scale.*`` (Caffe ``Res_Deeplab`` names: ``Scale.conv1.weight``,
  ``Scale.layer1.0.conv1.weight``, ...): the Caffe DeepLab-v2 initialisation
  ``DeepLab_resnet_pretrained_init`` (MS-COCO; ADVENT's ``..._imagenet`` file has the same keys).
  Backbone only: its ``Scale.layer5`` head (2048 inputs, another task's classes) is skipped, as
  the official loaders do. Layout caffe, input caffe_bgr.
- heads ``layer6.conv2d_list.*`` / ``layer5.conv2d_list.*`` beside ``conv1``, ``layer1..4``: an
  AdaptSegNet / ADVENT / DACS snapshot (or DACS's init, AdvSemiSeg's resnet101COCO file). With
  ``layer6`` present, ``layer6`` (2048 inputs) is the main head and ``layer5`` (1024 inputs) the
  layer3 head; alone, ``layer5`` is the main head (DACS). Heads load when the class count
  matches. Layout caffe, input caffe_bgr.
- ``fc.weight`` beside ``layer4.*``: torchvision ResNet (ImageNet), ``fc`` ignored. Layout
  torchvision, input imagenet_rgb.
- otherwise our own names (``backbone.*``, ``classifier.*``): a state dict (settings not
  recorded) or a uda run checkpoint (settings read from the config it carries).

DRN-C-26 (`drn_format`): the official ImageNet ``drn_c_26`` file of fyu/drn (``conv1``,
``layer1..8``, ``fc`` ignored; ImageNet RGB input), a fyu/drn ``DRNSeg`` snapshot (``base.N``,
``seg``; its fixed ``up`` deconvolution is ours with ``upsample='deconv'``), our own names.

`check_format` refuses a file whose layout or input convention differs from the network's
(the message names the config keys to set).
"""
from __future__ import annotations

import logging
import re

import yaml

from uda.models.weights import WeightsError, WeightsFormat

log = logging.getLogger(__name__)

CAFFE_INIT = ("DeepLab_resnet_pretrained_init (Caffe DeepLab-v2 ResNet initialisation, "
              "'Scale.' keys)")
OFFICIAL_SNAPSHOT = ("official DeepLab-v2 keys without 'Scale.' (AdaptSegNet/ADVENT/DACS snapshot, "
                     "DACS's resnet101COCO init)")
TORCHVISION_RESNET = "torchvision ResNet (ImageNet)"
DRN_IMAGENET = "official DRN-C-26 (fyu/drn ImageNet drn_c_26)"
DRN_SEG = "fyu/drn DRNSeg snapshot"
_BACKBONE_TOP = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")


def _own(key: str) -> tuple[str, ...]:
    return (key, "backbone." + key)


def _fc(key: str) -> bool:
    return key.startswith(("fc.", "backbone.fc."))


def deeplab_format(keys: list[str], obj=None) -> WeightsFormat:
    """The format of a DeepLabV2 weights file from its (wrapper-stripped) keys; ``obj`` is the
    loaded object (a uda run checkpoint says its layout in its config)."""
    if any(k.startswith("Scale.") for k in keys):
        return WeightsFormat(
            CAFFE_INIT, lambda k: ("backbone." + k[6:],) if k.startswith("Scale.") else (),
            ignore=lambda k: k.startswith("Scale.layer5."), layout="caffe",
            input_convention="caffe_bgr",
            skipped="its Scale.layer5 head is skipped, as the official loaders do")
    heads = {k.split(".")[0] for k in keys if re.match(r"layer[56]\.conv2d_list\.", k)}
    if heads:
        names = {"layer6": "classifier.convs", "layer5": "aux_classifier.convs"} \
            if "layer6" in heads else {"layer5": "classifier.convs"}

        def snapshot(k: str) -> tuple[str, ...]:
            top, _, rest = k.partition(".")
            if top in names and rest.startswith("conv2d_list."):
                return (f"{names[top]}.{rest[len('conv2d_list.'):]}",)
            return ("backbone." + k,) if k.startswith(_BACKBONE_TOP) else ()
        return WeightsFormat(OFFICIAL_SNAPSHOT, snapshot, layout="caffe",
                             input_convention="caffe_bgr")
    if "fc.weight" in keys and any(k.startswith("layer4.") for k in keys):
        return WeightsFormat(TORCHVISION_RESNET, _own, ignore=_fc,
                             layout="torchvision", input_convention="imagenet_rgb")
    return _uda_format(obj, "DeepLabV2", "deeplabv2", ignore=_fc)


def drn_format(keys: list[str], obj=None) -> WeightsFormat:
    """The format of a DRN-C-26 weights file from its (wrapper-stripped) keys."""
    if any(k.startswith("base.") for k in keys):
        return WeightsFormat(DRN_SEG, _drnseg_candidates, ignore=lambda k: k.startswith("up."),
                             upsample="deconv" if "up.weight" in keys else None,
                             skipped="its fixed up.weight deconvolution is rebuilt, not loaded")
    if "fc.weight" in keys and any(k.startswith("layer8.") for k in keys):
        return WeightsFormat(DRN_IMAGENET, _own, ignore=_fc,
                             input_convention="imagenet_rgb")
    return _uda_format(obj, "DRNC26", "drn_c26", ignore=_fc)


# fyu/drn segment.py (DRNSeg) keeps the backbone as ``base`` = Sequential(conv1, bn1, relu,
# layer1, ..., layer8) and the classifier as ``seg``.
_DRNSEG_BASE = {0: "conv1", 1: "bn1"} | {3 + i: f"layer{i + 1}" for i in range(8)}


def _drnseg_candidates(key: str) -> tuple[str, ...]:
    m = re.match(r"base\.(\d+)\.(.*)", key)
    if m and int(m.group(1)) in _DRNSEG_BASE:
        return (f"backbone.{_DRNSEG_BASE[int(m.group(1))]}.{m.group(2)}",)
    if key.startswith("seg."):
        return ("classifier." + key[4:],)
    return ()


def _uda_format(obj, network: str, model_name: str, ignore) -> WeightsFormat:
    """Our own names; a uda run checkpoint of this model says its settings in its config."""
    model = _run_model_config(obj)
    if model is None:
        return WeightsFormat(f"{network} state dict (our names; layout not recorded)", _own, ignore)
    step = obj["uda"].get("step", "?")
    if model.get("name") != model_name:  # refused with its own message (it does not fit)
        return WeightsFormat(f"uda run checkpoint (iteration {step}, model {model.get('name')})",
                             _own, ignore)
    # keys absent from an older run's config had the defaults of that time
    return WeightsFormat(f"uda run checkpoint (iteration {step}, model {model.get('name')})", _own,
                         ignore, layout=model.get("layout", "torchvision"),
                         input_convention=model.get("input_convention", "imagenet_rgb"),
                         upsample=model.get("upsample", "bilinear"))


def _run_model_config(obj) -> dict | None:
    info = obj.get("uda") if isinstance(obj, dict) else None
    text = info.get("config") if isinstance(info, dict) else None
    try:
        model = (yaml.safe_load(text) or {}).get("model") if text else None
    except yaml.YAMLError:
        return None
    return model if isinstance(model, dict) else None


def check_format(fmt: WeightsFormat, path, **settings: str) -> None:
    """Refuse weights trained with another ``layout`` or ``input_convention`` than the network's
    (WeightsError naming the file, the format and the keys to set); warn when only the
    ``upsample`` differs (the logits differ at the image border only)."""
    wrong = {k: getattr(fmt, k) for k, v in settings.items()
             if getattr(fmt, k) is not None and getattr(fmt, k) != v}
    upsample = wrong.pop("upsample", None)
    if upsample:
        log.warning("%s (%s) was trained with upsample=%s; this network upsamples with %s: set "
                    "model.upsample=%s to reproduce its outputs at the image border", path,
                    fmt.name, upsample, settings["upsample"], upsample)
    if wrong:
        have = ", ".join(f"model.{k}={settings[k]}" for k in wrong)
        need = " ".join(f"model.{k}={v}" for k, v in wrong.items())
        raise WeightsError(f"{path} ({fmt.name}) holds weights for {need.replace(' ', ', ')}; "
                           f"this network has {have}: set {need}")
