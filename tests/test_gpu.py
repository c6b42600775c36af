"""CUDA-only checks (marker `gpu`: skipped where no CUDA device is present; `pytest -m gpu
tests/` runs them, as scripts/bench_gpu.sh does first). Tiny toy configs, a few iterations each:
every recipe under each precision, fp16 loss scaling with several optimizers, evaluation and
the `uda train` command on the GPU."""
import json
import math
import os
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch

from conftest import REPO, shrink, shrunk_config
from uda import build
from uda.methods import NAMES

pytestmark = pytest.mark.gpu

METHODS = [m for m in NAMES if m != "oracle"]  # every recipe of the table
ITERATIONS = 4


class LossRecorder(pl.Callback):
    """The losses each training iteration logged (train/*, learning rates left out)."""

    def __init__(self):
        self.iterations: list[dict[str, float]] = []
        self.on_cuda: list[bool] = []  # every parameter on the GPU during training

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.on_cuda.append(all(p.is_cuda for p in pl_module.parameters()))
        self.iterations.append({k: float(v) for k, v in trainer.callback_metrics.items()
                                if k.startswith("train/") and not k.endswith("lr")})


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("method", METHODS)
def test_every_recipe_trains_on_cuda(toy_root, tmp_path, method, precision):
    cfg = shrunk_config(toy_root, tmp_path, method, "trainer.accelerator=gpu",
                        f"trainer.precision={precision}")
    module, dm = build.build_module(cfg), build.build_datamodule(cfg)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    losses = LossRecorder()
    steps = ITERATIONS * module.optimizer_steps_per_iteration
    trainer = pl.Trainer(max_steps=steps, limit_val_batches=2, accelerator="gpu", devices=1,
                         precision=precision, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, callbacks=[losses])
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == steps
    assert len(losses.iterations) == ITERATIONS and all(losses.iterations)
    bad = [(i, k, v) for i, it in enumerate(losses.iterations) for k, v in it.items()
           if not math.isfinite(v)]
    assert not bad, bad
    assert losses.on_cuda and all(losses.on_cuda)
    params = dict(module.named_parameters())  # back on the CPU after fit (Lightning's teardown)
    assert all(bool(torch.isfinite(p).all()) for p in params.values())
    changed = [n for n, p in params.items() if not torch.equal(p.detach().cpu(), before[n])]
    assert any(n.startswith("segmenter.") for n in changed)
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if precision == "16-mixed":
        # one GradScaler for all optimizers; it halves the scale at each step it skips for
        # inf/NaN gradients: most steps must have gone through
        assert scaler is not None
        assert scaler.get_scale() > 65536.0 / 2 ** (steps // 2), scaler.get_scale()
    else:
        assert scaler is None
    trainer.validate(module, datamodule=dm, verbose=False)
    assert module.last_results is not None and module.last_results["num_images"] >= 1


def test_cuda_predictions_match_cpu(toy_root, tmp_path):
    """The evaluation protocol (flip, two scales, upsampling to the label size) gives the same
    labels on the GPU as on the CPU (TF32 off; float rounding may still flip near-ties: at most
    0.1 % of pixels)."""
    cfg = shrunk_config(toy_root, tmp_path, "source_only", "eval.flip=true",
                        "eval.scales=[0.75,1.0]")
    module = build.build_module(cfg).eval()
    x = torch.randn(2, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        cpu = module.predict_labels(x, (96, 192))
        gpu = module.cuda().predict_labels(x.cuda(), (96, 192)).cpu()
    assert gpu.shape == cpu.shape == (2, 96, 192)
    assert (gpu != cpu).float().mean().item() <= 1e-3


def test_train_command_on_gpu_with_fp16(toy_root, tmp_path):
    """`uda train` on the GPU under 16-mixed (DRANet: three optimizers, one loss scaler): exit 0,
    the start summary names the device, results.json holds a finite mIoU."""
    run_dir = tmp_path / "run"
    # keep the caller's PYTHONPATH: on a bare GPU machine it holds the installed wheels
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    r = subprocess.run([sys.executable, "-m", "uda", "train", "--config",
                        str(REPO / "configs/toy/dranet.yaml"),
                        f"data.source.root={toy_root / 'source'}",
                        f"data.target.root={toy_root / 'target'}", f"run.dir={run_dir}",
                        *shrink(), "trainer.max_steps=3", "trainer.accelerator=gpu",
                        "trainer.precision=16-mixed", "logger.name=csv"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "devices 1 x cuda, precision 16-mixed" in r.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert math.isfinite(results["mIoU"])
