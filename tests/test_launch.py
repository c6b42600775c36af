"""Real launches through scripts/train_multigpu.sh (torchrun): 2 processes on one node, and a
2-node job simulated on loopback (two launches, static rendezvous on 127.0.0.1)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, SHRINK, free_port

SCRIPT = REPO / "scripts" / "train_multigpu.sh"


def overrides(toy_root):
    return [f"data.source.root={toy_root / 'source'}", f"data.target.root={toy_root / 'target'}",
            "trainer.accelerator=cpu", "trainer.max_steps=3", "trainer.val_every=3", *SHRINK]


def env(run_dir, **extra):
    e = dict(os.environ, PYTHON=sys.executable, RUN_DIR=str(run_dir), OMP_NUM_THREADS="1", **extra)
    e.pop("UDA_RUN_DIR", None)
    return e


def check_run(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    assert results["step"] == 3 and results["num_images"] == 5
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["uda"]["step"] == 3


@pytest.mark.ddp
@pytest.mark.slow
def test_torchrun_two_processes(toy_root, tmp_path):
    run = tmp_path / "run"
    r = subprocess.run(["bash", str(SCRIPT), "2", str(REPO / "configs/toy/source_only.yaml"),
                        *overrides(toy_root)], env=env(run), cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    check_run(run)


@pytest.mark.ddp
@pytest.mark.slow
def test_two_nodes_on_loopback(toy_root, tmp_path):
    port = free_port()
    run = tmp_path / "run"
    procs = [subprocess.Popen(
        ["bash", str(SCRIPT), "1", str(REPO / "configs/toy/source_only.yaml"), *overrides(toy_root)],
        env=env(run, NNODES="2", NODE_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port)), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True) for rank in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    check_run(run)
