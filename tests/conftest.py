import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import socket  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REAL_SAMPLES = REPO.parent / "shared" / "real_samples"


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
