"""The method section of the config and the one table of training methods.

Every method is declared once, in `METHODS`: its name (`method.name`), the module holding its
recipe (a LightningModule and a `build(settings, parts)` function, see
`uda.modules.base.RecipeParts`), its settings dataclass (the `method.<name>` config section, or
None), and what the rest of the framework needs to know about it. The config schema
(`MethodConfig`, the `method.name` choices and the method-specific checks), `uda.build`, the
CLI, the toy benchmark and the tests all derive from this table. Adding a method:
docs/adding_a_method.md. Imports nothing heavy (the config loads before torch).
"""
from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Callable, List, Optional


#: the values of method.optim.name
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw")


@dataclass
class OptimConfig:
    """The task network's optimizer: SGD, Adam (betas (momentum, 0.99)) or AdamW (betas
    (momentum, 0.999), decoupled weight decay: DAFormer's), with poly decay
    (lr * (1 - it/horizon)^power), the UDA standard; heads train at 10x lr. poly_horizon: the
    iteration at which the decay would reach 0; None = trainer.max_steps. The official
    AdaptSegNet / ADVENT / DACS code decays over 250k iterations and stops AdaptSegNet at 150k,
    ADVENT at 120k (poly_horizon: 250000 with trainer.max_steps: 150000 / 120000).
    warmup_iters: a linear warmup over the first iterations (0 = none), mmcv's `linear` warmup
    as DAFormer uses it: at iteration it < warmup_iters the poly factor is multiplied by
    1 - (1 - it / warmup_iters) * (1 - warmup_ratio) (warmup_ratio at it = 0, 1 at the end)."""
    name: str = "sgd"
    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    poly_horizon: Optional[int] = None
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6


@dataclass
class AdversarialConfig:
    """Output-space adversarial (AdaptSegNet/ADVENT). d_input: softmax | entropy (ADVENT's
    self-information maps -p log(p) / log(C)); gan_loss: vanilla | lsgan | hinge; multi_level
    adds a discriminator on the segmenter's auxiliary (layer3) output (needs a network with an
    aux head)."""
    d_lr: float = 1e-4
    d_width: int = 64
    d_input: str = "softmax"
    gan_loss: str = "vanilla"
    lambda_adv: float = 1e-3
    multi_level: bool = False
    lambda_aux_seg: float = 0.1
    lambda_aux_adv: float = 2e-4


@dataclass
class DRANetConfig:
    """DRANet (Lee et al. CVPR 2021). One architecture at every scale (configs/methods/dranet.yaml
    holds the method's switches and loss weights; the toy and real configs change sizes only).

    Translator: encoder (4x4 stride-2 stem of `width` channels, num_down - 1 further stride-2
    stages, `num_res` residual blocks, `enc_norm` normalisation), separator, and a
    style-modulated generator (AdaIN at every stage, no batch statistics) with a sub-pixel
    output; features have width * 2**num_down channels at 1/2**num_down. Discriminators:
    PatchGAN (`d_width`, `d_layers`, spectral norm) per domain, loss `gan_loss`
    (hinge | lsgan | vanilla). Perceptual: `perceptual` = lite (random conv features, CPU/toy;
    not a pretrained metric) | vgg19 (`perceptual_weights` = local torchvision vgg19 state
    dict). CADT attention temperature `cadt_temperature`. Loss weights w_*; the task network
    trains on source translated to the target style (w_seg_translated) and on raw source
    (w_seg_source). task_to_translator: the translated-image task loss also trains E/S/G
    (w_task_translator). content_norm: compare perceptual content on instance-normalised
    features (per-channel statistics are style; without it the content loss opposes the
    translation). checkpointing: activation checkpointing of the generator and of the
    perceptual network on translated images: their activations are recomputed in backward
    instead of being kept (less memory, a little more time; results unchanged).
    colour_transform: a translation is a global affine colour map of the source image (the
    domain map fitted to the domains' mean layouts, refined per image from the two style
    codes) plus the generator's one-channel detail added in tanh-logit space; false: the
    generator paints the image from the content map alone (the official code).
    colour_frames: how many whole training frames per domain give the mean thumbnails (8x16
    mean colours by position) that the domain colour map is fitted to, once at the start.
    w_layout (with colour_transform): each image's colour map must take the source domain's
    mean thumbnail to the target's (uda.losses.translation.layout_colour_loss).
    Optimizers: Adam(lr_translator, betas) for E/S/G, Adam(lr_d, betas) for D."""
    width: int = 32
    num_down: int = 1
    num_res: int = 2
    enc_norm: str = "batch"
    d_width: int = 64
    d_layers: int = 3
    gan_loss: str = "lsgan"
    perceptual: str = "lite"
    perceptual_weights: Optional[str] = None
    content_layer: str = "relu3_1"
    content_norm: bool = True
    style_layers: List[str] = field(default_factory=lambda: ["relu1_1", "relu2_1", "relu3_1"])
    cadt_temperature: float = 0.1
    lr_translator: float = 2e-4
    lr_d: float = 2e-4
    betas: List[float] = field(default_factory=lambda: [0.5, 0.999])
    w_rec: float = 10.0
    w_adv: float = 1.0
    w_content: float = 1.0
    w_style: float = 1.0
    w_consistency: float = 1.0
    w_seg_translated: float = 1.0
    w_seg_source: float = 1.0
    task_to_translator: bool = False
    w_task_translator: float = 0.1
    checkpointing: bool = False
    colour_transform: bool = False
    w_layout: float = 10.0
    colour_frames: int = 256


@dataclass
class SelfTrainingConfig:
    """Self-training with an EMA teacher (DACS): ClassMix of source classes onto target images
    whose other pixels take the teacher's pseudo-labels, weighted by the fraction of pixels above
    `threshold` confidence; the mixed-image loss has weight `weight`; teacher EMA decay `ema`.
    pseudo_weight: image (that fraction per target image) | batch (one fraction over the whole
    batch, as the official DACS and DAFormer code compute it).
    strong_aug: DACS's strong augmentation of the mixed images: colour jitter (probability
    jitter_p, strength jitter_strength for brightness, contrast, saturation and hue) and a
    Gaussian blur (probability blur_p), each decided once per iteration
    (datamodules.debias.photometric)."""
    threshold: float = 0.968
    ema: float = 0.99
    weight: float = 1.0
    pseudo_weight: str = "image"
    strong_aug: bool = True
    jitter_p: float = 0.8
    jitter_strength: float = 0.25
    blur_p: float = 0.5


#: DAFormer's `imnet_feature_dist_classes` (Cityscapes trainIds of the thing classes: traffic
#: light, traffic sign, person, rider, car, truck, bus, train, motorcycle, bicycle)
THING_CLASSES = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)


@dataclass
class DAFormerConfig(SelfTrainingConfig):
    """DAFormer (Hoyer et al. CVPR 2022): self_training (its keys threshold, ema, weight,
    pseudo_weight; DAFormer: ema 0.999, the batch-wide confident fraction) plus
    - thing-class ImageNet feature distance: fd_lambda x the mean L2 distance between the
      student's encoder features on source images and those of a frozen copy of the network at
      its initial (pretrained) weights, over the feature cells whose source label, pooled to the
      feature grid, is one of fd_classes and covers >= fd_scale_min_ratio of the cell
      (fd_lambda 0 = off; uda.losses.feature_distance);
    - pseudo-label crop: pseudo_ignore_top / pseudo_ignore_bottom rows (pixels of the training
      crop) of each target image weigh 0 in the mixed loss (DAFormer: 15 / 120 at 512x512);
    - strong augmentation of the mixed images: self_training's keys (strong_aug, jitter_p,
      jitter_strength, blur_p; DAFormer: strength 0.2) (datamodules.debias.photometric).
    The optimizer (AdamW, linear warmup then poly 1.0) is method.optim; rare-class sampling is
    data.debias.rare_class."""
    ema: float = 0.999
    pseudo_weight: str = "batch"
    fd_lambda: float = 0.005
    fd_classes: List[int] = field(default_factory=lambda: list(THING_CLASSES))
    fd_scale_min_ratio: float = 0.75
    pseudo_ignore_top: int = 15
    pseudo_ignore_bottom: int = 120
    jitter_strength: float = 0.2


@dataclass
class HRDAConfig(DAFormerConfig):
    """HRDA (Hoyer et al. ECCV 2022): daformer (all its keys) on a multi-resolution network
    (uda.models.hrda wraps model.*): the training crop downscaled by context_scale (the context,
    HRDA 0.5) and a detail_crop [h, w] window of it at full resolution (HRDA 512 x 512 of a
    1024 x 1024 crop) at a random offset, a multiple of crop_divisible pixels (HRDA 8), fused
    by a learned per-class scale attention (attention: false = a fixed 0.5; attention_dim: the
    attention head's width) that is 0 outside the window. Every training loss (source, mixed)
    is (1 - lambda_lr - lambda_hr) x CE(fused) + lambda_lr x CE(context) + lambda_hr x CE(detail
    window); HRDA: lambda_lr 0, lambda_hr 0.1. Inference (validation, the EMA teacher's pseudo-
    labels): the context on the whole image and detail windows sliding by slide_stride [h, w]
    (None: half the window, HRDA's) fused by the attention. The feature distance compares the
    context's encoder features (HRDA's feature_scale 0.5). Pixel sizes are of the training crop
    (HRDA's pseudo-label crop: 30 / 240 rows of a 1024-row crop, configs/methods/hrda.yaml)."""
    context_scale: float = 0.5
    detail_crop: List[int] = field(default_factory=lambda: [512, 512])
    crop_divisible: int = 8
    slide_stride: Optional[List[int]] = None
    lambda_lr: float = 0.0
    lambda_hr: float = 0.1
    attention: bool = True
    attention_dim: int = 256


@dataclass
class MaskedConsistencyConfig:
    """The masked-consistency keys of MIC and VFM-UDA++ (see MICConfig): mask_block_size
    (pixels), mask_ratio, mic_lambda, mic_augment."""
    mask_block_size: int = 64
    mask_ratio: float = 0.7
    mic_lambda: float = 1.0
    mic_augment: bool = True


@dataclass
class MICConfig(HRDAConfig, MaskedConsistencyConfig):
    """MIC (Hoyer et al. CVPR 2023) on top of daformer or hrda (`host`; all daformer keys, and
    the hrda keys, read only when host is hrda): masked image consistency.
    Each target image, strong-augmented when mic_augment (MIC's `separatetrgaug`) and masked by
    random blocks of mask_block_size pixels, each dropped with probability mask_ratio
    (uda.losses.masking), is trained against the teacher's pseudo-labels of the unmasked image
    with their confidence weights (and pseudo-label crop), at loss weight mic_lambda (on hrda:
    with the host's multi-resolution loss on a random detail window, as the official MIC)."""
    host: str = "daformer"


@dataclass
class VFMConfig(SelfTrainingConfig, MaskedConsistencyConfig):
    """VFM-UDA++ (Englert & Dubbelman, ICCVW 2025; tue-mps/vfm-uda-plusplus training/uda/uda.py)
    on a DINOv2 segmenter (model.name=dinov2): self_training (its keys; VFM-UDA++: ema 0.999,
    the batch-wide confident fraction, strong augmentation strength 0.2) plus
    - feature distance to the frozen foundation model: the student's last-block tokens,
      projected by a trained 1x1 MLP (D -> 4D, LayerNorm, GELU -> D), against the tokens of a
      frozen copy of the pretrained DINOv2 segmenter, on every cell (no class selection): per
      cell 0.1 x mean smooth-L1 over channels + 0.9 x (1 - cosine similarity), averaged; weight
      fd_source on the source images and fd_target on the target images (0 = off);
    - masked target consistency as MIC (mask_ratio, mic_lambda, mic_augment) with blocks of
      mask_block_size pixels aligned to the 14-pixel patch grid (a multiple of 14): each masked
      patch token becomes the embedding of a mean-colour patch
      (uda.losses.masking.patch_block_mask).
    The optimizer (AdamW, warmup, linear decay, backbone 0.1x with layer-wise decay
    model.vit_layer_decay) is method.optim with the segmenter's param_groups."""
    ema: float = 0.999
    pseudo_weight: str = "batch"
    jitter_strength: float = 0.2
    fd_source: float = 0.1
    fd_target: float = 0.1
    mask_block_size: int = 56  # a multiple of the 14-pixel patch


def _check_daformer(cfg) -> Optional[str]:
    s = cfg.method[cfg.method.name]
    key = f"method.{cfg.method.name}"
    bad = [c for c in s.fd_classes if not 0 <= c < cfg.data.num_classes]
    if bad:
        return (f"{key}.fd_classes: {bad} are not class ids 0..{cfg.data.num_classes - 1} "
                f"(trainIds; DAFormer's things: {list(THING_CLASSES)})")
    if s.fd_lambda < 0 or not 0 <= s.fd_scale_min_ratio <= 1:
        return (f"{key}: need fd_lambda >= 0 (0 = no feature distance) and 0 <= "
                f"fd_scale_min_ratio <= 1, got {s.fd_lambda}, {s.fd_scale_min_ratio}")
    crop = cfg.data.target_transform.crop
    if s.pseudo_ignore_top < 0 or s.pseudo_ignore_bottom < 0 or (
            crop and s.pseudo_ignore_top + s.pseudo_ignore_bottom >= crop[0]):
        return (f"{key}.pseudo_ignore_top / pseudo_ignore_bottom: rows of the target crop "
                f"(data.target_transform.crop={list(crop) if crop else None}), each >= 0 and "
                f"together fewer than its height; got {s.pseudo_ignore_top}, "
                f"{s.pseudo_ignore_bottom}")
    if not (0 <= s.jitter_strength and 0 <= s.jitter_p <= 1 and 0 <= s.blur_p <= 1):
        return (f"{key}: need jitter_strength >= 0, 0 <= jitter_p <= 1 and 0 <= blur_p <= 1, "
                f"got {s.jitter_strength}, {s.jitter_p}, {s.blur_p}")
    return None


def _check_hrda(cfg) -> Optional[str]:
    s = cfg.method[cfg.method.name]
    key = f"method.{cfg.method.name}"
    if not 0 < s.context_scale < 1 or s.crop_divisible < 1 or s.attention_dim < 1:
        return (f"{key}: need 0 < context_scale < 1, crop_divisible >= 1 and attention_dim >= 1, "
                f"got {s.context_scale}, {s.crop_divisible}, {s.attention_dim}")
    if len(s.detail_crop) != 2 or min(s.detail_crop) < 1:
        return f"{key}.detail_crop: [height, width] in pixels, got {list(s.detail_crop)}"
    for side in ("source_transform", "target_transform"):
        crop = getattr(cfg.data, side).crop
        if crop and (s.detail_crop[0] > crop[0] or s.detail_crop[1] > crop[1]):
            return (f"{key}.detail_crop={list(s.detail_crop)} must fit in the training crop "
                    f"data.{side}.crop={list(crop)}: make it at most that (HRDA: half of it)")
    stride = s.slide_stride
    if stride is not None and (len(stride) != 2 or min(stride) < 1 or stride[0] > s.detail_crop[0]
                               or stride[1] > s.detail_crop[1]):
        return (f"{key}.slide_stride: [h, w] from 1 to detail_crop={list(s.detail_crop)} (null: "
                f"half the window, HRDA's), got {list(stride)}")
    if s.lambda_lr < 0 or s.lambda_hr < 0 or s.lambda_lr + s.lambda_hr > 1:
        return (f"{key}: need lambda_lr, lambda_hr >= 0 with lambda_lr + lambda_hr <= 1 (the fused "
                f"loss weighs the rest), got {s.lambda_lr}, {s.lambda_hr}")
    return _check_daformer(cfg)


def _check_mic(cfg) -> Optional[str]:
    s = cfg.method.mic
    if s.mask_block_size < 1 or not 0 <= s.mask_ratio < 1 or s.mic_lambda < 0:
        return ("method.mic: need mask_block_size >= 1 (pixels), 0 <= mask_ratio < 1 and "
                f"mic_lambda >= 0, got {s.mask_block_size}, {s.mask_ratio}, {s.mic_lambda}")
    return _check_hrda(cfg) if s.host == "hrda" else _check_daformer(cfg)


#: DINOv2's patch size: VFM masks align to it
VIT_PATCH = 14


def _check_vfm(cfg) -> Optional[str]:
    s = cfg.method.vfm
    if cfg.model.name != "dinov2":
        return (f"method.name=vfm trains a DINOv2 vision foundation model: set model.name=dinov2 "
                f"(model.vit_variant s|b|l, model.pretrained=<local DINOv2 weights>), got "
                f"model.name={cfg.model.name}")
    if s.mask_block_size < VIT_PATCH or s.mask_block_size % VIT_PATCH:
        return (f"method.vfm.mask_block_size must be a multiple of the ViT patch size "
                f"{VIT_PATCH} (masks align to the patch tokens), got {s.mask_block_size}")
    if not 0 <= s.mask_ratio < 1 or s.mic_lambda < 0 or s.fd_source < 0 or s.fd_target < 0:
        return ("method.vfm: need 0 <= mask_ratio < 1 and mic_lambda, fd_source, fd_target >= 0, "
                f"got {s.mask_ratio}, {s.mic_lambda}, {s.fd_source}, {s.fd_target}")
    if not (0 <= s.jitter_strength and 0 <= s.jitter_p <= 1 and 0 <= s.blur_p <= 1):
        return (f"method.vfm: need jitter_strength >= 0, 0 <= jitter_p <= 1 and 0 <= blur_p <= 1, "
                f"got {s.jitter_strength}, {s.jitter_p}, {s.blur_p}")
    return None


def _check_adversarial(cfg) -> Optional[str]:
    if cfg.method.adversarial.multi_level and not (cfg.model.name == "deeplabv2"
                                                   and cfg.model.multi_level):
        return ("method.adversarial.multi_level=true needs a network with an auxiliary head: "
                "model.name=deeplabv2 model.multi_level=true")
    return None


def _check_dranet(cfg) -> Optional[str]:
    if cfg.method.dranet.perceptual == "vgg19" and not cfg.method.dranet.perceptual_weights:
        return ("method.dranet.perceptual=vgg19 needs method.dranet.perceptual_weights (a local "
                "torchvision vgg19 state dict): a random VGG is no perceptual metric; "
                "perceptual=lite is meant for toy/CPU runs")
    return None


@dataclass(frozen=True)
class Method:
    """One row of the table of methods.

    name: the value of method.name (also the toy config configs/toy/<name>.yaml).
    recipe: the module holding the recipe and its `build(settings, parts)`.
    settings: the dataclass of the method.<name> config section (None: no settings).
    choices: allowed values of its settings' keys (key relative to method.<name>).
    removed: keys (relative to method.<name>) that existed once -> what to do instead.
    check: cfg -> None, or the message of a configuration error the settings alone cannot see.
    labelled_target: trains on labelled target images (the oracle: toy benchmark upper bound).
    translator: the recipe trains a DRANet translator (style codec, `uda translate`, the
    translation-quality diagnostics)."""
    name: str
    recipe: str
    summary: str
    settings: Optional[type] = None
    choices: dict = field(default_factory=dict)
    removed: dict = field(default_factory=dict)
    check: Optional[Callable] = None
    labelled_target: bool = False
    translator: bool = False


METHODS: tuple[Method, ...] = (
    Method("source_only", "uda.modules.supervised",
           "supervised on labelled source, evaluated on the target"),
    Method("adversarial", "uda.modules.adversarial",
           "output-space adversarial adaptation (AdaptSegNet / ADVENT)",
           settings=AdversarialConfig, check=_check_adversarial,
           choices={"d_input": ("softmax", "entropy"),
                    "gan_loss": ("vanilla", "lsgan", "hinge")}),
    Method("dranet", "uda.modules.dranet",
           "DRANet translation of the source into the target style + segmentation",
           settings=DRANetConfig, check=_check_dranet, translator=True,
           choices={"enc_norm": ("batch", "bin", "instance", "none"),
                    "gan_loss": ("vanilla", "lsgan", "hinge"), "perceptual": ("lite", "vgg19")},
           removed={"gen_norm": "the DRANet generator is always style-modulated (AdaIN, no "
                                "batch statistics); delete the key (the encoder's is "
                                "method.dranet.enc_norm)",
                    "style_mod": "the DRANet generator is always style-modulated (AdaIN); "
                                 "delete the key"}),
    Method("self_training", "uda.modules.self_training",
           "EMA-teacher self-training: pseudo-labelled target with source classes pasted (DACS)",
           settings=SelfTrainingConfig, choices={"pseudo_weight": ("image", "batch")}),
    Method("daformer", "uda.modules.daformer",
           "DAFormer: self-training + thing-class feature distance, pseudo-label crop, strong "
           "augmentation (AdamW + warmup, rare-class sampling in its configs)",
           settings=DAFormerConfig, check=_check_daformer,
           choices={"pseudo_weight": ("image", "batch")}),
    Method("hrda", "uda.modules.hrda",
           "HRDA: daformer on a multi-resolution network (low-resolution context + high-"
           "resolution detail crop fused by a learned scale attention)",
           settings=HRDAConfig, check=_check_hrda, choices={"pseudo_weight": ("image", "batch")}),
    Method("mic", "uda.modules.mic",
           "MIC: daformer (or hrda: method.mic.host) + masked image consistency on the target",
           settings=MICConfig, check=_check_mic,
           choices={"pseudo_weight": ("image", "batch"), "host": ("daformer", "hrda")}),
    Method("vfm", "uda.modules.vfm",
           "VFM-UDA++: self-training of a DINOv2 segmenter + feature distance to the frozen "
           "foundation model, patch-aligned masked consistency",
           settings=VFMConfig, check=_check_vfm, choices={"pseudo_weight": ("image", "batch")}),
    Method("oracle", "uda.modules.supervised",
           "supervised on labelled target train (toy benchmark upper bound)",
           labelled_target=True),
)

NAMES: tuple[str, ...] = tuple(m.name for m in METHODS)


def method(name: str) -> Method:
    """The table row of `name` (ValueError naming the choices when there is none)."""
    for m in METHODS:
        if m.name == name:
            return m
    raise ValueError(f"method.name={name!r} is not one of {', '.join(NAMES)}")


#: The `method` config section: name, the task optimizer, and one section per method's settings.
MethodConfig = make_dataclass(
    "MethodConfig",
    [("name", str, field(default="source_only")),
     ("optim", OptimConfig, field(default_factory=OptimConfig)),
     *[(m.name, m.settings, field(default_factory=m.settings)) for m in METHODS if m.settings]],
    namespace={"__doc__": "Training recipe: name (one of uda.methods.NAMES), optim (the task "
                          "network's optimizer) and one section of settings per method (ignored "
                          "by the others)."})
MethodConfig.__module__ = __name__
