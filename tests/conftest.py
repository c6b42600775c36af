import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import socket  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REAL_SAMPLES = REPO.parent / "shared" / "real_samples"

# The overrides that make a toy run tiny, for every method (a method ignores the other methods'
# sections): no worker processes, batch 2, 32x64 crops, 8-channel networks, no progress bar.
# A test adds its own trainer.* (steps, validation, accelerator) after it; later overrides win.
SHRINK = ["data.num_workers=0", "data.batch_size=2", "data.source_transform.crop=[32,64]",
          "data.target_transform.crop=[32,64]", "model.width=8", "method.dranet.width=8",
          "method.dranet.d_width=8", "method.adversarial.d_width=8", "trainer.progress_bar=false"]
CROPS = ("data.source_transform.crop", "data.target_transform.crop")  # shrink(*CROPS): configured


def shrink(*without: str) -> list[str]:
    """SHRINK less the overrides of the keys `without` (those keep their configured values)."""
    return [o for o in SHRINK if o.split("=", 1)[0] not in without]


def shrunk_config(toy_root, tmp_path, method: str, *extra: str):
    """configs/toy/<method>.yaml on the tiny toy data, with tiny networks, crops and batches."""
    from uda.config import load_config
    return load_config(REPO / f"configs/toy/{method}.yaml", [
        f"data.source.root={toy_root / 'source'}", f"data.target.root={toy_root / 'target'}",
        f"run.dir={tmp_path}", *SHRINK, "trainer.max_steps=2", "trainer.accelerator=cpu", *extra])


def kill_at(iteration: int, sig: int | None = None):
    """A Lightning callback that sends this process a real signal (default SIGTERM) at the end
    of training iteration `iteration` (imports Lightning only when called)."""
    import signal

    import pytorch_lightning as pl

    class KillAt(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if pl_module.iteration == iteration:
                os.kill(os.getpid(), sig or signal.SIGTERM)

    return KillAt()


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (process-group rendezvous in multi-process tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def real_samples() -> Path:
    """../shared/real_samples (third-party files, never copied into the repo); skip if absent."""
    if not REAL_SAMPLES.is_dir():
        pytest.skip(f"real samples not found at {REAL_SAMPLES}")
    return REAL_SAMPLES


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    """A tiny toy benchmark (generated once per session)."""
    from datamodules.toy import make_toy
    out = tmp_path_factory.mktemp("toy")
    make_toy(out, seed=0, num_source=12, num_target_train=12, num_target_val=5)
    return out


def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
