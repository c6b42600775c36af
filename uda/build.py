"""The one place where config names become objects: datasets, datamodule, network, recipe,
trainer. Everything it builds takes plain arguments (no config objects past this file)."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from functools import partial
from importlib import import_module
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.environments import SLURMEnvironment
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from omegaconf import OmegaConf
from torch import nn

from datamodules.datamodule import UDADataModule
from datamodules.debias.pipeline import (ClassMix, CutMix, DebiasPipeline, Mixup, SelecMix,
                                         StyleSwap)
from datamodules.class_stats import class_counts
from datamodules.debias.sampling import RareClassSampler
from datamodules.datasets import DATASETS, SegmentationDataset
from datamodules.labels import CLASS_NAMES, SYNTHIA_13_CLASSES, SYNTHIA_16_CLASSES
from datamodules.transforms import build_transform, transform_from_config
from uda import logging_setup, methods, panels
from uda.callbacks import IoUTable, IterationProgressBar, QuietLibraries, SyncBuffers
from uda.checkpoint_io import config_for, read_checkpoint
from uda.config import Config, ConfigError
from uda.models import DRNC26, DeepLabV2, SmallSegNet
from uda.models.mit import MiTSegmenter
from uda.models.weights import WeightsError, load_matching_weights
from uda.models.sync_bn import convert_sync_batchnorm
from uda.modules.base import RecipeParts, SegmentationModule
from uda.modules.dranet import build_translator


def build_dataset(domain, split: str, transform, labelled: bool) -> SegmentationDataset:
    cls = DATASETS[domain.dataset]
    return cls(domain.root, split, transform=transform, labelled=labelled,
               list_file=domain.list_file if split == domain.split else None,
               prepared=domain.prepared)


def build_datamodule(cfg: Config) -> UDADataModule:
    d = cfg.data
    target_train = build_dataset(d.target, d.target.split,
                                 transform_from_config(d.target_transform, train=True),
                                 labelled=False)  # adaptation methods never read target labels
    source_train = build_source_train(cfg, train=True)
    target_val = build_target_val(cfg)
    rare = d.debias.rare_class
    source_index_at = None
    if rare.enabled:
        counts, message = class_counts(source_train, d.num_classes)
        if rank_zero_only.rank == 0:
            print(f"uda: rare-class sampling: {message}", flush=True)
        source_index_at = RareClassSampler(counts, rare.temperature, rare.min_pixels).index_at
    return UDADataModule(source_train, target_train, target_val, batch_size=d.batch_size,
                         val_batch_size=d.val_batch_size, num_workers=d.num_workers,
                         pin_memory=d.pin_memory, persistent_workers=d.persistent_workers,
                         seed=cfg.seed, debias=build_debias(cfg),
                         source_index_at=source_index_at)


def build_source_train(cfg: Config, train: bool = True) -> SegmentationDataset:
    """The labelled training set of the recipe: the source, or for the oracle (toy benchmark
    only) the labelled target train split; with the training transform, or none."""
    d = cfg.data
    oracle = methods.method(cfg.method.name).labelled_target
    domain, tf = (d.target, d.target_transform) if oracle else (d.source, d.source_transform)
    return build_dataset(domain, domain.split, transform_from_config(tf, train=True) if train
                         else None, labelled=True)


def build_debias(cfg: Config) -> DebiasPipeline | None:
    """The batch mixers in their fixed order (see DebiasConfig); None without any."""
    d = cfg.data.debias
    mixers = []
    if d.style_swap.enabled:
        mixers.append(StyleSwap(d.style_swap.p, d.style_swap.donor, tuple(d.style_swap.alpha_range)))
    if d.cutmix.enabled:
        mixers.append(CutMix(d.cutmix.p, d.cutmix.alpha))
    if d.classmix.enabled:
        mixers.append(ClassMix(d.classmix.p))
    if d.mixup.enabled:
        mixers.append(Mixup(d.mixup.p, d.mixup.alpha))
    if d.selecmix.enabled:
        mixers.append(SelecMix(d.selecmix.p, d.selecmix.alpha, d.selecmix.lam_max))
    return DebiasPipeline(mixers) if mixers else None


def build_segmenter(cfg: Config) -> nn.Module:
    try:
        net = _segmenter(cfg.model, cfg.data.num_classes, cfg.data.source_transform)
    except (FileNotFoundError, WeightsError) as e:  # only weight loading raises these
        raise ConfigError(f"model.pretrained: {e}") from None
    if cfg.model.freeze_bn:
        if not hasattr(net, "freeze_bn"):
            raise ValueError(f"model.freeze_bn is not supported by model.name={cfg.model.name!r}")
        net.freeze_bn()
    if cfg.model.freeze_bn_affine:
        freeze_bn_affine(net)
    return net


def freeze_bn_affine(net: nn.Module) -> None:
    """Every BatchNorm's weight and bias out of training (requires_grad False: no optimizer
    group takes them); the layers keep their mode, so training ones use batch statistics."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.requires_grad_(False)


def _segmenter(m, n: int, norm) -> nn.Module:
    """The network of a `model` config section with `n` classes (input normalised as the
    transform `norm` says), its weights loaded."""
    if m.name == "small":
        net = SmallSegNet(num_classes=n, width=m.width)
        if m.pretrained:
            net.load_report = load_matching_weights(net, m.pretrained, lambda key: (key,))
    elif m.name == "deeplabv2":
        net = DeepLabV2(num_classes=n, backbone=m.backbone, multi_level=m.multi_level,
                        pretrained=m.pretrained, layout=m.layout,
                        input_convention=m.input_convention, input_mean=tuple(norm.mean),
                        input_std=tuple(norm.std), aspp_branches=m.aspp_branches)
    elif m.name == "drn_c26":
        net = DRNC26(num_classes=n, pretrained=m.pretrained, upsample=m.upsample)
    elif m.name == "dinov2":
        from uda.models.vit import ViTSegmenter  # imports timm (seconds): only for this model
        net = ViTSegmenter(num_classes=n, variant=m.vit_variant, pretrained=m.pretrained,
                           depth=m.vit_depth, dim=m.vit_dim, layer_decay=m.vit_layer_decay,
                           checkpointing=m.vit_checkpointing)
    elif m.name == "mit":
        net = MiTSegmenter(num_classes=n, variant=m.variant, head=m.head, head_dim=m.head_dim,
                           pretrained=m.pretrained)
    else:
        raise ValueError(f"model.name={m.name!r} is not available")
    return net


def class_subsets(cfg: Config) -> dict:
    if cfg.data.source.dataset == "synthia":
        return {"mIoU16": SYNTHIA_16_CLASSES, "mIoU13": SYNTHIA_13_CLASSES}
    return {}


def eval_options(cfg: Config) -> dict:
    """Keyword arguments of `uda.evaluation.inference.predict_labels`."""
    e = cfg.eval
    return {"mode": e.mode, "crop": None if e.crop is None else tuple(e.crop),
            "stride": None if e.stride is None else tuple(e.stride), "flip": e.flip,
            "scales": tuple(e.scales)}


def build_module(cfg: Config) -> SegmentationModule:
    module = _build_module(cfg)
    d = cfg.data.debias
    if d.lff.enabled or d.selecmix.enabled:
        module.attach_debias(biased=build_segmenter(cfg), gce_q=d.biased.q,
                             w_biased=d.biased.weight,
                             lff_ema=d.lff.ema if d.lff.enabled else None)
    module.max_nonfinite_skips = cfg.trainer.max_nonfinite_skips
    if cfg.trainer.sync_batchnorm:
        accel = cfg.trainer.accelerator
        cuda = accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available())
        convert_sync_batchnorm(module, backend_cuda=cuda)
    return module


def _build_module(cfg: Config) -> SegmentationModule:
    """The recipe of `cfg.method.name`, built by its module's `build` (see uda.methods)."""
    entry = methods.method(cfg.method.name)
    common = dict(max_steps=cfg.trainer.max_steps, optim=OmegaConf.to_object(cfg.method.optim),
                  class_subsets=class_subsets(cfg), eval_options=eval_options(cfg),
                  channels_last=cfg.trainer.channels_last,
                  image_mean=tuple(cfg.data.source_transform.mean),
                  image_std=tuple(cfg.data.source_transform.std))
    parts = RecipeParts(segmenter=partial(build_segmenter, cfg), class_names=CLASS_NAMES,
                        common=common, domain_means=partial(layout_means, cfg))
    settings = cfg.method[entry.name] if entry.settings else None
    return import_module(entry.recipe).build(settings, parts)


def layout_means(cfg: Config, frames: int, size: tuple[int, int]
                 ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean thumbnails (3, *size) in [-1, 1] of up to `frames` evenly spaced whole frames (native
    size) of each domain's training split, and the number of frames averaged (the smaller)."""
    d, means, used = cfg.data, [], []
    plain = build_transform(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    for dom in (d.source, d.target):
        ds = build_dataset(dom, dom.split, plain, labelled=False)
        idx = torch.linspace(0, len(ds) - 1, min(frames, len(ds))).round().long().unique()
        acc = torch.zeros(3, *size)
        for i in idx.tolist():
            acc += torch.nn.functional.adaptive_avg_pool2d(ds[i]["image"][None] * 2 - 1, size)[0]
        means.append(acc / len(idx))
        used.append(len(idx))
    return means[0], means[1], min(used)


def load_module(ckpt: dict, cfg: Config, ckpt_path):
    """The recipe of `cfg` with the weights of checkpoint `ckpt` (read from `ckpt_path`), in eval
    mode; ConfigError naming the file when the weights do not fit the configured model."""
    module = build_module(cfg)
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:  # missing/unexpected keys or shape mismatches
        detail = " ".join(str(e).split())[:400]
        raise ConfigError(f"{ckpt_path}: weights do not fit the configured model "
                          f"({cfg.model.name}, method {cfg.method.name}): {detail}; check "
                          "--config / model.* overrides") from None
    return module.eval()


def attach_style_codec(module: SegmentationModule, cfg: Config) -> None:
    """For training only: load the DRANet translator of data.debias.style_swap.codec_checkpoint
    (methods other than DRANet, which uses its own)."""
    path = cfg.data.debias.style_swap.codec_checkpoint
    if not (cfg.data.debias.style_swap.enabled and path):  # config: never set for DRANet
        return
    ckpt = read_checkpoint(path)
    ccfg = config_for(ckpt, path)
    if not methods.method(ccfg.method.name).translator:
        raise ConfigError(f"data.debias.style_swap.codec_checkpoint: {path} is a "
                          f"{ccfg.method.name} checkpoint; the codec needs a DRANet one")
    r = ccfg.method.dranet
    translator = build_translator(r)
    state = {k[len("translator."):]: v for k, v in ckpt["state_dict"].items()
             if k.startswith("translator.")}
    translator.load_state_dict(state, strict=True)
    module.set_style_codec(translator)


def build_logger(cfg: Config, run_dir: Path):
    """The run's experiment logger (`logger` section; `uda.logging_setup.create_logger`)."""
    lg = cfg.logger
    return logging_setup.create_logger(
        lg.name, run_dir, project=lg.project, name=lg.run_name or run_dir.name, group=lg.group,
        tags=list(lg.tags), mode=lg.mode, config=OmegaConf.to_container(cfg, resolve=True),
        log_checkpoints=lg.log_checkpoints, is_rank_zero=rank_zero_only.rank == 0)


_DDP_START = {"ddp": "popen", "ddp_fork": "fork", "ddp_spawn": "spawn"}


def _num_devices(devices, cuda: bool) -> int:
    """How many processes per node Lightning starts for `trainer.devices` (an int, -1 / "auto"
    for all, a count string, "0,1" or a list of GPU indices); all = the CUDA devices, or 1 on
    CPU (Lightning's CPU default)."""
    every = torch.cuda.device_count() if cuda else 1
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1"):
            return every
        if "," in text:
            return len([d for d in text.split(",") if d.strip()])
        return int(text) if text.isdigit() else 1
    if isinstance(devices, int):
        return every if devices == -1 else devices
    return len(devices)  # list of indices


def build_strategy(cfg: Config):
    """DDP with what manual optimization needs: several optimizers leave parameters unused in
    each backward (find_unused_parameters; static_graph fails); a process-group timeout so that
    the other ranks exit instead of hanging when one dies.

    `trainer.strategy=auto` with several processes (trainer.devices > 1 or trainer.num_nodes > 1)
    on CUDA or CPU gets this strategy too (Lightning's own choice, plain DDP, fails on DRANet with
    "parameters that were not used in producing the loss"): `ddp` semantics on CUDA (Lightning
    re-executes the command per GPU, or torchrun/SLURM started the ranks), `ddp_fork` on CPU
    (gloo, what the CPU DDP tests use; launchers that start the ranks themselves ignore the
    start method). Other accelerators and single-process runs keep Lightning's choice. CUDA is
    counted with torch.cuda.device_count(), which does not initialise CUDA."""
    t = cfg.trainer
    strategy = t.strategy
    if strategy == "auto" and t.accelerator in ("auto", "cpu", "gpu", "cuda"):
        cuda = t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto"
                                                    and torch.cuda.device_count() > 0)
        if t.num_nodes > 1 or _num_devices(t.devices, cuda) > 1:
            strategy = "ddp" if cuda else "ddp_fork"
    if strategy not in _DDP_START:
        return strategy
    return DDPStrategy(start_method=_DDP_START[strategy], find_unused_parameters=True,
                       timeout=timedelta(seconds=t.ddp_timeout_s))


def build_trainer(cfg: Config, run_dir: Path, callbacks: list,
                  optimizer_steps_per_iteration: int = 1, last: Sequence = ()) -> pl.Trainer:
    """The Trainer of a run: `callbacks`, then the logger's (IoU table, panels), then `last`
    (e.g. uda.translation_callback.for_config: built by the caller, which may import what
    needs this module)."""
    t = cfg.trainer
    logger = build_logger(cfg, run_dir)
    if logger:
        mean, std = cfg.data.eval_transform.mean, cfg.data.eval_transform.std
        callbacks = [*callbacks, IoUTable(),
                     panels.PanelLogger(cfg.logger.panels_every, run_dir=run_dir,
                                        mean=tuple(mean), std=tuple(std))]
    callbacks = [*callbacks, *last]
    # Lightning counts optimizer steps; our max_steps counts iterations.
    val_every = t.val_every if 0 < t.val_every <= t.max_steps else t.max_steps
    callbacks = [QuietLibraries(), *callbacks]
    return pl.Trainer(
        max_steps=t.max_steps * optimizer_steps_per_iteration, max_epochs=-1,
        devices=t.devices, accelerator=t.accelerator, strategy=build_strategy(cfg),
        num_nodes=t.num_nodes, precision=t.precision, deterministic=t.deterministic,
        val_check_interval=val_every, check_val_every_n_epoch=None, num_sanity_val_steps=0,
        log_every_n_steps=t.log_every, enable_progress_bar=t.progress_bar,
        enable_checkpointing=False, enable_model_summary=False, logger=logger,
        callbacks=[SyncBuffers(), *callbacks,
                   *([IterationProgressBar()] if t.progress_bar else [])],
        default_root_dir=str(run_dir),
        use_distributed_sampler=False,
        # our GracefulStop checkpoints and requeues on SIGUSR1; Lightning's own would also try
        plugins=[SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None)


def build_eval_transform(cfg: Config):
    """The evaluation transform (`data.eval_transform`): target val, predicted files, style
    frames."""
    return transform_from_config(cfg.data.eval_transform, train=False)


def build_target_val(cfg: Config) -> SegmentationDataset:
    """Labelled target val with the evaluation transform: the validation and `uda evaluate`
    set."""
    return build_dataset(cfg.data.target, cfg.data.target_val_split, build_eval_transform(cfg),
                         labelled=True)


def build_eval_datamodule(cfg: Config) -> UDADataModule:
    """Labelled target val alone (`uda evaluate`)."""
    d = cfg.data
    return UDADataModule(None, None, build_target_val(cfg), val_batch_size=d.val_batch_size,
                         num_workers=d.num_workers, pin_memory=d.pin_memory, seed=cfg.seed)


def build_eval_trainer(cfg: Config, callbacks: list) -> pl.Trainer:
    """The Trainer of `uda evaluate`: the run's devices, strategy and precision, no logger."""
    t = cfg.trainer
    return pl.Trainer(accelerator=t.accelerator, devices=t.devices,
                      strategy=build_strategy(cfg),  # as training: auto/ddp* with >1 device
                      num_nodes=t.num_nodes, precision=t.precision, logger=False,
                      enable_progress_bar=t.progress_bar, enable_model_summary=False,
                      use_distributed_sampler=False, callbacks=callbacks)


def build_style_frames(cfg: Config) -> SegmentationDataset:
    """Unlabelled target train with the evaluation transform: the frames of `uda translate`'s
    style bank."""
    d = cfg.data
    return build_dataset(d.target, d.target.split, build_eval_transform(cfg), labelled=False)


def build_source_at(cfg: Config, root, labelled: bool = False) -> SegmentationDataset:
    """The source split under `root` (`uda translate --input`) at native size, normalised as the
    run's source images."""
    t = cfg.data.source_transform
    return DATASETS[cfg.data.source.dataset](root, cfg.data.source.split, labelled=labelled,
                                             transform=build_transform(mean=t.mean, std=t.std))
