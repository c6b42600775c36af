"""Structured configuration: dataclasses are the schema, YAML files and `key=value` only override.

Loading order (later wins): dataclass defaults -> each YAML in the `defaults:` chain of the file
(paths relative to that file) -> the file itself -> command-line dotlist overrides.
Unknown keys and wrong types fail at load time with a `ConfigError` naming the key and the file.

Keys that later parts rely on: `data.source.root`, `data.target.root`, `trainer.max_steps`
(training *iterations*, one batch of source + target each, whatever the number of optimizers),
`trainer.devices`, `trainer.accelerator`, `seed`, `run.dir`.
"""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from uda.methods import METHODS, NAMES, OPTIMIZERS, MethodConfig, method


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the file (or 'command line')."""


@dataclass
class DomainConfig:
    """One dataset split. `dataset` in {gta5, cityscapes, synthia}; `root` is the dataset root in
    its official layout; `list_file` optionally restricts to the names listed (one per line).
    prepared: the folder of `uda data prepare`'s files for this root (trainIds maps, resized
    copies, class statistics); null = `<root>/.uda_prepared` when it exists; false = read the
    originals only (class statistics are then not cached)."""
    dataset: str = "gta5"
    root: str = MISSING
    split: str = "train"
    list_file: Optional[str] = None
    prepared: Optional[str] = None


@dataclass
class TransformConfig:
    """Albumentations pipeline parameters. Sizes are [height, width].
    resize: fixed resize first (None keeps the native size); scale_range: random rescale factors
    [min, max] after resize (None = off); crop: random crop (padded with ignore where smaller);
    hflip: probability; jitter: colour-jitter strength (brightness/contrast/saturation; hue is
    jitter/4), 0 = off; jitter_p: its probability.
    Normalisation: (pixel / 255 - mean) / std per RGB channel (ImageNet's by default). A network
    whose weights expect another convention converts this tensor itself (model.input_convention)."""
    resize: Optional[List[int]] = None
    scale_range: Optional[List[float]] = None
    crop: Optional[List[int]] = None
    hflip: float = 0.0
    jitter: float = 0.0
    jitter_p: float = 0.5
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class MixConfig:
    """A sample mixer within the source batch: enabled, per-image probability p, Beta(alpha,
    alpha) mixing ratio."""
    enabled: bool = False
    p: float = 0.5
    alpha: float = 1.0


@dataclass
class StyleSwapConfig:
    """Style-swap counterfactuals: each source image (probability p) keeps its DRANet content and
    takes style  alpha * donor + (1 - alpha) * own, alpha ~ U(alpha_range), labels kept.
    donor: target (cross-domain) | source (another source image). The codec is the method's own
    DRANet translator, or, for other methods, the one in `codec_checkpoint` (a DRANet run's
    checkpoint)."""
    enabled: bool = False
    p: float = 0.5
    donor: str = "target"
    alpha_range: List[float] = field(default_factory=lambda: [0.5, 1.0])
    codec_checkpoint: Optional[str] = None


@dataclass
class SelecMixConfig:
    """SelecMix: mixup of each source image (probability p) with the batch image whose biased
    features are least similar (a different bias), lam = lam_max * Beta(alpha, alpha) kept for
    the anchor. Needs the GCE-trained biased network (`biased`)."""
    enabled: bool = False
    p: float = 0.5
    alpha: float = 1.0
    lam_max: float = 0.5


@dataclass
class LfFConfig:
    """Learning from Failure: per-(image, class) EMAs (decay `ema`) of the biased and debiased
    networks' CE give pixel weights W = CE_b / (CE_b + CE_d) on the source CE loss."""
    enabled: bool = False
    ema: float = 0.7


@dataclass
class BiasedConfig:
    """The auxiliary biased network of LfF / SelecMix: the segmenter's architecture, fresh init,
    trained on source with the generalized CE (q) at loss weight `weight`."""
    q: float = 0.7
    weight: float = 1.0


@dataclass
class RareClassConfig:
    """DAFormer's rare-class sampling of source images: class c with probability
    softmax((1 - f_c) / temperature), then an image with more than min_pixels pixels of c."""
    enabled: bool = False
    temperature: float = 0.01
    min_pixels: int = 0


@dataclass
class DebiasConfig:
    """Debiasing augmentations (datamodules/debias). Applied on device to each training batch in
    a fixed order: style_swap, cutmix, classmix (within source), then one blend: mixup or
    selecmix. (DACS, source pasted onto pseudo-labelled target, is the self_training method.)
    lff re-weights the source loss; rare_class changes the source sampling. All randomness is seeded by (seed, rank, iteration): resumable and DDP-safe."""
    style_swap: StyleSwapConfig = field(default_factory=StyleSwapConfig)
    cutmix: MixConfig = field(default_factory=MixConfig)
    classmix: MixConfig = field(default_factory=MixConfig)
    mixup: MixConfig = field(default_factory=lambda: MixConfig(alpha=0.4))
    selecmix: SelecMixConfig = field(default_factory=SelecMixConfig)
    lff: LfFConfig = field(default_factory=LfFConfig)
    biased: BiasedConfig = field(default_factory=BiasedConfig)
    rare_class: RareClassConfig = field(default_factory=RareClassConfig)


@dataclass
class DataConfig:
    """Source (labelled) and target (unlabelled train + labelled val) data. Batch sizes are per
    process (per GPU) and per domain: a training step sees batch_size source + batch_size target
    images on each rank."""
    source: DomainConfig = field(default_factory=lambda: DomainConfig(dataset="gta5"))
    target: DomainConfig = field(default_factory=lambda: DomainConfig(dataset="cityscapes"))
    target_val_split: str = "val"
    source_transform: TransformConfig = field(default_factory=TransformConfig)
    target_transform: TransformConfig = field(default_factory=TransformConfig)
    eval_transform: TransformConfig = field(default_factory=TransformConfig)
    batch_size: int = 2
    val_batch_size: int = 1
    num_workers: int = 2
    pin_memory: bool = False
    persistent_workers: bool = False
    num_classes: int = 19
    debias: DebiasConfig = field(default_factory=DebiasConfig)


@dataclass
class ModelConfig:
    """Segmentation network. name in {small, deeplabv2 (ResNet-101 or -50: `backbone`),
    drn_c26}. width: base channel width (small only); pretrained: local weights file in a format
    of uda.models.weight_formats (the Caffe DeepLab-v2 init DeepLab_resnet_pretrained_init,
    AdaptSegNet/ADVENT/DACS snapshots, torchvision ResNet, official DRN-C-26 / DRNSeg, a run's
    checkpoint) or None = random init; freeze_bn: keep the backbone's BatchNorm statistics fixed
    (batch 2 per GPU); freeze_bn_affine: keep only the affine parameters (weight, bias) of every
    BatchNorm fixed while it normalises with batch statistics (the official AdaptSegNet / ADVENT
    / DACS DeepLabV2: BN in training mode, its parameters not trained); multi_level:
    DeepLabV2's auxiliary layer3 head (AdaptSegNet multi-level).
    layout (deeplabv2): caffe = the official AdaptSegNet/ADVENT/DACS ResNet (stride in layer2's
    1x1 conv, layer3/4 dilated 2/4 throughout, ceil-mode max-pool, logits upsampled with
    align_corners=True; evaluation upsamples the stride-8 logits to the label size in one step,
    as the official evaluation) | torchvision = torchvision's ResNet (align_corners=False).
    input_convention (deeplabv2): what the weights expect, converted inside the network from the
    data normalisation: imagenet_rgb | caffe_bgr (BGR, 0-255 minus the Caffe mean, no std).
    upsample (drn_c26): bilinear | deconv (fyu/drn's fixed bilinear transposed convolution, as
    used with the official DRNSeg weights). Other networks ignore these three keys (a config
    chain may change model.name). Loading refuses weights of another layout / input convention.
    The real DeepLabV2 configs set layout=caffe, input_convention=caffe_bgr.
    aspp_branches (deeplabv2): ASPP convolutions summed per head, 1-4 (4 = DeepLab-v2, ADVENT;
    2 = what AdaptSegNet's and DACS's code compute: it returns inside the summing loop).
    name=dinov2: timm's DINOv2 ViT (vit_variant: s | b | l = ViT-S/14, ViT-B/14, ViT-L/14) with a
    multi-level pyramid head (uda.models.vit); pretrained: timm weights (.pth / .safetensors), the
    official dinov2_vit*14_pretrain.pth, or a dinov2 run's checkpoint. vit_depth / vit_dim: toy
    sizes replacing the variant's number of blocks (>= 4) / width (a multiple of 48); such a
    network takes no published weights. vit_layer_decay: per-block learning-rate decay of the
    backbone from its last block (VFM-UDA++: 0.9; 1.0 = the whole backbone at method.optim.lr);
    the head trains at 10x. vit_checkpointing: activation checkpointing of the ViT's blocks
    (timm's grad checkpointing: the backward recomputes each block; same results, much less
    memory for 1024-pixel crops).
    mit (uda.models.mit): variant b0..b5 (MiT encoder), head daformer (DAFormer's context-aware
    fusion) | segformer (all-MLP), head_dim: the head's width (DAFormer 256; 64 for CPU toy runs);
    pretrained: official SegFormer mit_bX.pth, SMP, HuggingFace or DAFormer files."""
    name: str = "small"
    width: int = 32
    backbone: str = "resnet101"
    pretrained: Optional[str] = None
    freeze_bn: bool = False
    freeze_bn_affine: bool = False
    multi_level: bool = False
    layout: str = "torchvision"
    input_convention: str = "imagenet_rgb"
    upsample: str = "bilinear"
    aspp_branches: int = 4
    vit_variant: str = "s"
    vit_depth: Optional[int] = None
    vit_dim: Optional[int] = None
    vit_layer_decay: float = 0.9
    vit_checkpointing: bool = False
    variant: str = "b5"
    head: str = "daformer"
    head_dim: int = 256


# Keys that existed once: a clear error instead of "key not in the schema" (the methods' own
# come from the table of methods).
_REMOVED_KEYS = {f"method.{m.name}.{k}": why for m in METHODS for k, why in m.removed.items()}
_REMOVED_KEYS["data.debias.dacs"] = (
    "DACS (an EMA teacher's pseudo-labels on target images with source classes pasted) is the "
    "self-training recipe: method.name=self_training with method.self_training.{threshold, ema, "
    "weight, pseudo_weight} (see configs/toy/self_training.yaml)")


@dataclass
class TrainerConfig:
    """Forwarded to the Lightning Trainer. max_steps counts training iterations (batches).
    val_every: validate on target val every N iterations (0 = only at the end).
    precision: 32-true | bf16-mixed | 16-mixed. channels_last: NHWC model and images.
    strategy: auto | ddp (torchrun / SLURM / Lightning's launcher) | ddp_fork | ddp_spawn; auto
    with several processes is our DDP too (ddp on CUDA, ddp_fork on CPU: uda.build.build_strategy);
    ddp_timeout_s: collective timeout (a dead rank makes the others fail instead of hang).
    max_nonfinite_skips: iterations with a NaN/Inf loss to skip before stopping (0: stop at the
    first, with a clear error; the last good checkpoint is kept).
    sync_batchnorm: batch statistics over all ranks (torch SyncBatchNorm on CUDA, our
    all-reduce batch norm elsewhere); frozen BN layers (model.freeze_bn) stay as they are."""
    max_steps: int = 1000
    devices: Any = 1
    accelerator: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    val_every: int = 500
    log_every: int = 50
    deterministic: bool = False
    progress_bar: bool = True
    channels_last: bool = False
    ddp_timeout_s: int = 1800
    max_nonfinite_skips: int = 0
    sync_batchnorm: bool = False


@dataclass
class EvalConfig:
    """Evaluation protocol (validation during training, `uda evaluate`): predict at the
    eval_transform size, upsample logits bilinearly to the label's native resolution.
    mode: whole | slide (crop/stride [h, w] windows); flip: add the mirrored pass;
    scales: input rescale factors averaged (multi-scale).
    translation_reference: a segmentation checkpoint trained on labelled target images (e.g. an
    oracle run's); DRANet runs then also log its FCN-score on translated source frames at each
    validation (a diagnostic: never used for training or model selection).
    translation_images: source-train and target-val images on which DRANet runs log the
    translation quality (val_translation/*) at each validation; 0 turns it off."""
    mode: str = "whole"
    crop: Optional[List[int]] = None
    stride: Optional[List[int]] = None
    flip: bool = False
    scales: List[float] = field(default_factory=lambda: [1.0])
    translation_reference: Optional[str] = None
    translation_images: int = 16


@dataclass
class RunConfig:
    """Where a run writes. dir defaults to runs/<experiment>/<timestamp>.
    checkpoint_every: also write last.ckpt and a kept iter-NNNNNNN.ckpt every N iterations."""
    experiment: str = "default"
    dir: Optional[str] = None
    checkpoint_every: int = 0


@dataclass
class LoggerConfig:
    """name: wandb (default) | csv | tensorboard | none. wandb mode: auto (online when
    credentials exist, else offline with a `wandb sync` hint) | online | offline | disabled;
    an unreachable wandb never stops training (falls back to CSV). project/run_name/group/tags
    name the run; panels_every: image panels (source, target, translations, prediction/GT
    overlays) every N iterations (0 = only at validation); log_checkpoints: upload
    checkpoints as wandb artifacts. Only rank 0 logs."""
    name: str = "wandb"
    mode: str = "auto"
    project: str = "uda"
    run_name: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    panels_every: int = 500
    log_checkpoints: bool = False


@dataclass
class Config:
    seed: int = 0
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = (getattr(e, "msg", None) or str(e)).splitlines()[0]
        removed = next((k for k in _REMOVED_KEYS if key == k or key.startswith(k + ".")), None)
        if removed:
            raise ConfigError(f"{source}: '{key}' was removed: {_REMOVED_KEYS[removed]}") from None
        raise ConfigError(f"{source}: invalid key '{key}': {msg}") from None


def _load_yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, DictConfig]]:
    """The YAML file and its `defaults: [other.yaml, ...]` parents, parents first."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: circular 'defaults' chain")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        node = OmegaConf.load(path)
    except Exception as e:  # yaml errors
        raise ConfigError(f"{path}: cannot parse YAML ({e})") from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: top level must be a mapping")
    chain: list[tuple[Path, DictConfig]] = []
    parents = node.pop("defaults", [])
    if isinstance(parents, str):
        parents = [parents]
    for parent in parents or []:
        parent_path = path.parent / str(parent)
        if not parent_path.is_file():
            raise ConfigError(f"{path}: 'defaults' entry '{parent}': config file {parent_path} "
                              f"not found (paths are relative to {path.parent}); fix or remove "
                              "the entry")
        chain += _load_yaml_chain(parent_path, seen + (path,))
    chain.append((path, node))
    return chain


def _without_disabled_removed(node: DictConfig) -> DictConfig:
    """A checkpoint's stored config without the removed sections it stored switched off (e.g.
    `data.debias.dacs: {enabled: false, ...}`, written by every run before the removal): they
    had no effect on the run. A removed section that was on still gets the removal error."""
    for key in _REMOVED_KEYS:
        parent, _, leaf = key.rpartition(".")
        section = OmegaConf.select(node, parent) if parent else node
        value = section.get(leaf) if isinstance(section, DictConfig) else None
        if isinstance(value, DictConfig) and value.get("enabled") is False:
            del section[leaf]
    return node


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                base_text: str | None = None, base_name: str = "checkpoint config") -> Config:
    """Build the validated config (an OmegaConf-typed `Config`). `base_text` (a resolved YAML,
    e.g. the one stored in a checkpoint) is applied first, then the file, then the overrides."""
    cfg = OmegaConf.structured(Config)
    if base_text:
        cfg = _merge(cfg, _without_disabled_removed(OmegaConf.create(base_text)), base_name)
    if path is not None:
        for file, node in _load_yaml_chain(Path(path)):
            cfg = _merge(cfg, node, str(file))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' is not of the form key=value")
        cfg = _merge(cfg, OmegaConf.from_dotlist([item]), f"command line '{item}'")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        src = path or "the defaults"
        raise ConfigError(f"{src}: required key(s) not set: {', '.join(missing)} "
                          f"(set them in the YAML or as key=value)")
    _validate(cfg)
    return cfg  # type: ignore[return-value]


_CHOICES = {
    "data.source.dataset": ("gta5", "cityscapes", "synthia"),
    "data.target.dataset": ("gta5", "cityscapes", "synthia"),
    "model.name": ("small", "deeplabv2", "drn_c26", "dinov2", "mit"),
    "model.variant": ("b0", "b1", "b2", "b3", "b4", "b5"),
    "model.head": ("daformer", "segformer"),
    "model.backbone": ("resnet101", "resnet50"),
    "model.layout": ("torchvision", "caffe"),
    "model.input_convention": ("imagenet_rgb", "caffe_bgr"),
    "model.upsample": ("bilinear", "deconv"),
    "model.vit_variant": ("s", "b", "l"),
    "method.name": NAMES,
    **{f"method.{m.name}.{k}": v for m in METHODS for k, v in m.choices.items()},
    "method.optim.name": OPTIMIZERS,
    "data.debias.style_swap.donor": ("target", "source"),
    "logger.name": ("wandb", "csv", "tensorboard", "none"),
    "logger.mode": ("auto", "online", "offline", "disabled"),
    "eval.mode": ("whole", "slide"),
    "trainer.strategy": ("auto", "ddp", "ddp_fork", "ddp_spawn"),
    "trainer.precision": ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true"),
}


# key: (smallest allowed value, what the key means / the fix)
_AT_LEAST = {
    "data.batch_size": (1, "images per process and domain in a training step"),
    "data.val_batch_size": (1, "images per validation batch"),
    "data.num_workers": (0, "loader processes per dataloader; 0 loads in the main process"),
    "seed": (0, "the global seed; use an integer >= 0"),
    "model.head_dim": (1, "channels of the MiT decode head (model.name=mit)"),
}


def _validate_warmup(o) -> None:
    if o.warmup_iters < 0:
        raise ConfigError(f"method.optim.warmup_iters must be >= 0 (iterations of linear "
                          f"learning-rate warmup; 0 = none), got {o.warmup_iters}")
    if not 0 < o.warmup_ratio <= 1:
        raise ConfigError(f"method.optim.warmup_ratio must be in (0, 1] (the learning-rate factor "
                          f"at the first warmup iteration), got {o.warmup_ratio}")


def _validate(cfg: DictConfig) -> None:
    for key, choices in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}")
    if cfg.trainer.max_steps <= 0:
        raise ConfigError(f"trainer.max_steps must be > 0, got {cfg.trainer.max_steps}")
    for key, (low, what) in _AT_LEAST.items():
        value = OmegaConf.select(cfg, key)
        if value < low:
            raise ConfigError(f"{key} must be >= {low} ({what}), got {value}")
    if not cfg.method.optim.lr > 0:  # also NaN
        raise ConfigError(f"method.optim.lr must be > 0 (the task network's learning rate), "
                          f"got {cfg.method.optim.lr}")
    _validate_warmup(cfg.method.optim)
    horizon = cfg.method.optim.poly_horizon
    if horizon is not None and horizon < cfg.trainer.max_steps:
        raise ConfigError(f"method.optim.poly_horizon={horizon} is below trainer.max_steps="
                          f"{cfg.trainer.max_steps}: the learning rate would be 0 for the last "
                          f"iterations; set poly_horizon >= max_steps or null (= max_steps)")
    _validate_accelerator(cfg.trainer.accelerator)
    chosen = method(cfg.method.name)
    problem = chosen.check(cfg) if chosen.check else None
    if problem:
        raise ConfigError(problem)
    r = cfg.method.dranet
    if r.perceptual_weights and not Path(r.perceptual_weights).is_file():
        raise ConfigError(f"method.dranet.perceptual_weights: file {r.perceptual_weights} not found")
    if cfg.model.freeze_bn and not cfg.model.pretrained:
        raise ConfigError("model.freeze_bn=true keeps the BatchNorm statistics of pretrained weights; "
                          "with a random init they do not normalise (the loss diverges to NaN): "
                          "set model.pretrained=<local ImageNet weights> or model.freeze_bn=false")
    _validate_model_options(cfg)
    if cfg.model.pretrained and not Path(cfg.model.pretrained).is_file():
        raise ConfigError(f"model.pretrained: weights file {cfg.model.pretrained} not found "
                          "(give a local path; nothing is downloaded)")
    _validate_debias(cfg)
    e = cfg.eval
    if e.mode == "slide" and (e.crop is None or e.stride is None):
        raise ConfigError("eval.mode=slide needs eval.crop and eval.stride ([height, width])")
    if not e.scales or min(e.scales) <= 0:
        raise ConfigError(f"eval.scales must be positive factors, got {list(e.scales)}")
    if e.translation_images < 0:
        raise ConfigError(f"eval.translation_images must be >= 0, got {e.translation_images}")
    if e.translation_reference and not Path(e.translation_reference).is_file():
        raise ConfigError(f"eval.translation_reference: checkpoint {e.translation_reference} not "
                          "found (a reference segmentation checkpoint, e.g. an oracle run's "
                          "last.ckpt; eval.translation_reference=null turns it off)")
    for name in ("source_transform", "target_transform", "eval_transform"):
        t = cfg.data[name]
        for k in ("resize", "crop"):
            if t[k] is not None and (len(t[k]) != 2 or min(t[k]) <= 0):
                raise ConfigError(f"data.{name}.{k} must be [height, width] > 0, got {list(t[k])}")
        if t.scale_range is not None and (len(t.scale_range) != 2
                                          or not 0 < t.scale_range[0] <= t.scale_range[1]):
            raise ConfigError(f"data.{name}.scale_range must be [min, max] with 0 < min <= max")


def _validate_model_options(cfg: DictConfig) -> None:
    """aspp_branches in 1..4; DeepLabV2's input conversion uses one data normalisation: every
    transform must share it."""
    m = cfg.model
    _validate_vit(m)
    if not 1 <= m.aspp_branches <= 4:
        raise ConfigError(f"model.aspp_branches must be 1..4 (ASPP convolutions summed per head), "
                          f"got {m.aspp_branches}")
    if m.name == "deeplabv2" and m.input_convention != "imagenet_rgb":
        norms = {name: (list(cfg.data[name].mean), list(cfg.data[name].std))
                 for name in ("source_transform", "target_transform", "eval_transform")}
        if len({str(v) for v in norms.values()}) > 1:
            raise ConfigError(f"model.input_convention={m.input_convention} converts the data "
                              "normalisation inside the network: data.source_transform, "
                              "data.target_transform and data.eval_transform must share mean and "
                              f"std (got {norms})")


def _validate_vit(m: DictConfig) -> None:
    """Toy sizes of the DINOv2 ViT: four distinct blocks for the head; a width every variant's
    head count (6, 12, 16) and the head's three halvings divide."""
    if m.vit_depth is not None and m.vit_depth < 4:
        raise ConfigError(f"model.vit_depth must be >= 4 (the head reads four blocks) or null (the "
                          f"variant's depth), got {m.vit_depth}")
    if m.vit_dim is not None and (m.vit_dim <= 0 or m.vit_dim % 48):
        raise ConfigError(f"model.vit_dim must be a positive multiple of 48 or null (the "
                          f"variant's width), got {m.vit_dim}")
    if m.vit_checkpointing and m.name != "dinov2":
        raise ConfigError(f"model.vit_checkpointing is for model.name=dinov2 (the ViT's blocks), "
                          f"got model.name={m.name}; remove it")
    if not 0 < m.vit_layer_decay <= 1:
        raise ConfigError(f"model.vit_layer_decay must be in (0, 1], got {m.vit_layer_decay}")


def _validate_accelerator(accelerator: str) -> None:
    """trainer.accelerator=gpu|cuda without a CUDA device fails here, not in Lightning. torch is
    imported for this check only; device_count() does not initialise CUDA (fork-safe, unlike
    is_available())."""
    if accelerator not in ("gpu", "cuda"):
        return
    import torch
    if torch.cuda.device_count() == 0:
        raise ConfigError(f"trainer.accelerator={accelerator} but no CUDA device is available: use "
                          "trainer.accelerator=cpu (or auto: CUDA when present, else CPU)")


def _validate_debias(cfg: DictConfig) -> None:
    d = cfg.data.debias
    for name in ("style_swap", "cutmix", "classmix", "mixup", "selecmix"):
        if not 0 <= d[name].p <= 1:
            raise ConfigError(f"data.debias.{name}.p must be in [0, 1], got {d[name].p}")
    if d.mixup.enabled and d.selecmix.enabled:
        raise ConfigError("data.debias.mixup and data.debias.selecmix both blend whole images: "
                          "enable one of them")
    if not 0 < d.selecmix.lam_max <= 1:
        raise ConfigError(f"data.debias.selecmix.lam_max must be in (0, 1], got {d.selecmix.lam_max}")
    alpha = list(d.style_swap.alpha_range)
    if len(alpha) != 2 or not 0 <= alpha[0] <= alpha[1] <= 1:
        raise ConfigError("data.debias.style_swap.alpha_range must be [min, max] within [0, 1], "
                          f"got {list(d.style_swap.alpha_range)}")
    codec = d.style_swap.codec_checkpoint
    own_codec = method(cfg.method.name).translator
    if d.style_swap.enabled and not own_codec and not codec:
        raise ConfigError(f"data.debias.style_swap with method.name={cfg.method.name} needs "
                          "data.debias.style_swap.codec_checkpoint (a DRANet run's checkpoint): "
                          "only DRANet has its own style codec")
    if d.style_swap.enabled and own_codec and codec:
        raise ConfigError("data.debias.style_swap.codec_checkpoint is for other methods: DRANet "
                          "swaps styles with the translator it trains; unset it")
    if not 0 < d.lff.ema < 1 or d.biased.q <= 0:
        raise ConfigError("data.debias.lff.ema must be in (0, 1) and data.debias.biased.q > 0")


def resolve_run_dir(cfg: Config) -> Path:
    """Fill `run.dir` (runs/<experiment>/<timestamp>) when unset; returns it."""
    if not cfg.run.dir:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        cfg.run.dir = str(Path("runs") / cfg.run.experiment / stamp)
    return Path(cfg.run.dir)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
