"""Every training recipe, built from its real toy config and shrunk (tiny nets, crops, batches)."""
import pytest
import pytorch_lightning as pl
import torch

from conftest import shrunk_config
from uda import build
from uda.methods import NAMES

METHODS = NAMES  # every method of the table


shrunk = shrunk_config


@pytest.mark.parametrize("method", METHODS)
def test_fast_dev_run_every_method(toy_root, tmp_path, method):
    cfg = shrunk(toy_root, tmp_path, method)
    module, dm = build.build_module(cfg), build.build_datamodule(cfg)
    trainer = pl.Trainer(fast_dev_run=1, accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == module.optimizer_steps_per_iteration
    assert module.last_results is not None and module.last_results["num_images"] >= 1


class StepWatcher(pl.Callback):
    """Records, for every optimizer.step(), which parameters changed."""

    def __init__(self):
        self.records = []  # (index of optimizer, names it owns, names that changed)

    def on_train_start(self, trainer, pl_module):
        names = {id(p): n for n, p in pl_module.named_parameters()}
        for i, opt in enumerate(trainer.optimizers):
            own = {names[id(p)] for g in opt.param_groups for p in g["params"]}
            snap = {}

            def pre(optimizer, args, kwargs, snap=snap):
                snap.clear()
                snap.update({n: p.detach().clone() for n, p in pl_module.named_parameters()})

            def post(optimizer, args, kwargs, i=i, own=own, snap=snap):
                changed = {n for n, p in pl_module.named_parameters()
                           if not torch.equal(p.detach(), snap[n])}
                self.records.append((i, own, changed))

            opt.register_step_pre_hook(pre)
            opt.register_step_post_hook(post)


@pytest.mark.parametrize("method", ["adversarial", "dranet"])
def test_each_optimizer_step_changes_only_its_own_parameters(toy_root, tmp_path, method):
    cfg = shrunk(toy_root, tmp_path, method)
    module, dm = build.build_module(cfg), build.build_datamodule(cfg)
    watcher = StepWatcher()
    trainer = pl.Trainer(max_steps=2 * module.optimizer_steps_per_iteration, accelerator="cpu",
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, limit_val_batches=0,
                         use_distributed_sampler=False, callbacks=[watcher])
    trainer.fit(module, datamodule=dm)
    assert len(watcher.records) == 2 * module.optimizer_steps_per_iteration
    for i, own, changed in watcher.records:
        assert changed, f"optimizer {i} changed nothing"
        assert changed <= own, f"optimizer {i} changed foreign parameters {sorted(changed - own)[:5]}"
    perceptual = {n for n, _ in module.named_parameters() if n.startswith("perceptual.")}
    assert perceptual.isdisjoint(set().union(*(c for _, _, c in watcher.records)))


@pytest.mark.parametrize("to_translator", [False, True])
def test_task_loss_reaches_translator_only_when_configured(toy_root, tmp_path, to_translator):
    cfg = shrunk(toy_root, tmp_path, "dranet",
                 f"method.dranet.task_to_translator={str(to_translator).lower()}")
    module, dm = build.build_module(cfg), build.build_datamodule(cfg)
    batch = next(iter(dm.train_dataloader()))
    x_s, m_s, x_t = batch["source"]["image"], batch["source"]["mask"], batch["target"]["image"]
    u_s, u_t = module.to_unit(x_s), module.to_unit(x_t)
    out = module.translate(u_s, u_t)
    # the task step as the recipe runs it: translations detached
    module.weighted(module.task_losses(batch, out["x_st"].detach())).backward()
    assert all(p.grad is None for p in module.translator.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.segmenter.parameters())
    # the E/S/G losses carry a task term exactly when configured
    module.zero_grad()
    real = module.real_targets(u_s, u_t)
    out = module.translate(u_s, u_t)
    losses = module.translator_losses(u_s, u_t, out, real, m_s)
    assert ("task_translator" in losses) == to_translator
    if to_translator:
        module.zero_grad()
        losses["task_translator"].backward()
        # (at initialisation the colour transform's translator is the identity plus zero-
        # initialised heads: the gradient reaches those heads, the encoder only after a step)
        assert any(p.grad is not None and p.grad.abs().sum() > 0
                   for p in module.translator.parameters())


def test_translator_handles_crops_and_full_frames(toy_root, tmp_path):
    cfg = shrunk(toy_root, tmp_path, "dranet")
    module = build.build_module(cfg).eval()
    with torch.no_grad():
        for h, w in [(32, 64), (128, 256)]:
            u = torch.rand(2, 3, h, w) * 2 - 1
            out = module.translate(u, torch.rand(3, 3, 32, 64) * 2 - 1)
            assert out["x_st"].shape == (2, 3, h, w) and out["attn_st"].shape == (2, 3)
            assert torch.allclose(out["attn_st"].sum(1), torch.ones(2))
            assert out["x_st"].abs().max() <= 1.0


@pytest.mark.parametrize("method", ["source_only", "adversarial", "dranet", "daformer", "mic", "hrda"])
def test_bf16_mixed_and_channels_last_run(toy_root, tmp_path, method):
    cfg = shrunk(toy_root, tmp_path, method, "trainer.channels_last=true")
    module, dm = build.build_module(cfg), build.build_datamodule(cfg)
    trainer = pl.Trainer(fast_dev_run=1, accelerator="cpu", precision="bf16-mixed", logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False)
    trainer.fit(module, datamodule=dm)
    conv = next(m for m in module.segmenter.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert module.last_results is not None
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_progress_bar_counts_iterations_not_optimizer_steps(toy_root, tmp_path):
    from uda.callbacks import IterationProgressBar
    cfg = shrunk(toy_root, tmp_path, "dranet", "trainer.progress_bar=true", "trainer.max_steps=3",
                 "logger.name=none")
    module, dm = build.build_module(cfg), build.build_datamodule(cfg)
    trainer = build.build_trainer(cfg, tmp_path, [], module.optimizer_steps_per_iteration)
    (bar,) = [c for c in trainer.callbacks if isinstance(c, IterationProgressBar)]
    trainer.fit(module, datamodule=dm)
    assert trainer.max_steps == 9 and bar.total_train_batches == 3
    assert bar.train_progress_bar.total == 3 and bar.train_progress_bar.n == 3
