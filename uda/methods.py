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


@dataclass
class OptimConfig:
    """The task network's optimizer: SGD (or Adam with betas (momentum, 0.99)) with poly decay
    (lr * (1 - it/horizon)^power), the UDA standard; heads train at 10x lr. poly_horizon: the
    iteration at which the decay would reach 0; None = trainer.max_steps. The official
    AdaptSegNet / ADVENT / DACS code decays over 250k iterations and stops AdaptSegNet at 150k,
    ADVENT at 120k (poly_horizon: 250000 with trainer.max_steps: 150000 / 120000)."""
    name: str = "sgd"
    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    poly_horizon: Optional[int] = None


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
