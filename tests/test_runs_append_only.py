"""Runs are append-only: a second `uda train` into a run is refused before any write, a failed
resume changes nothing, a resume appends to metrics.csv, best.ckpt only improves, failed writes
leave no temp file, and Ctrl-C / SIGTERM checkpoint and exit with EXIT_INTERRUPTED (3)."""
import csv
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import uda.build
from conftest import REPO, SHRINK, kill_at
from datamodules.atomic_write import write_text_atomic
from uda.checkpointing import AtomicCheckpoint, recorded_best
from uda.cli import main
from uda.run_guard import previous_run_files
from uda.train import EXIT_INTERRUPTED

TINY = [*SHRINK, "trainer.val_every=2", "trainer.log_every=1", "logger.name=csv"]


def train_args(toy_root, run_dir, *extra):
    return ["train", "--config", str(REPO / "configs/toy/source_only.yaml"),
            f"data.source.root={toy_root / 'source'}", f"data.target.root={toy_root / 'target'}",
            f"run.dir={run_dir}", *TINY, *extra]


def snapshot(run_dir: Path) -> dict:
    """{relative path: sha256} of every file under run_dir."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished(toy_root, tmp_path_factory) -> Path:
    """A finished 4-iteration run (validated at 2 and 4); tests copy it before writing."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(train_args(toy_root, run, "trainer.max_steps=4")) == 0
    return run


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    return run


def test_previous_run_files(finished, tmp_path):
    assert previous_run_files(tmp_path) == []  # an empty or unrelated directory is usable
    (tmp_path / "notes.txt").write_text("x")
    assert previous_run_files(tmp_path) == []
    assert previous_run_files(finished) == ["checkpoints/best.ckpt", "checkpoints/last.ckpt",
                                            "config.yaml", "logs/metrics.csv", "results.json"]


def test_train_into_an_existing_run_is_refused_and_writes_nothing(toy_root, run_copy, capsys):
    before = snapshot(run_copy)
    assert main(train_args(toy_root, run_copy, "trainer.max_steps=2")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"uda: error: run.dir={run_copy} already holds a run (")
    assert "--resume auto" in err and "another run.dir=..." in err and "nothing was written" in err
    assert snapshot(run_copy) == before


def test_failed_resume_leaves_every_file_identical(toy_root, run_copy, capsys):
    before = snapshot(run_copy)
    assert main([*train_args(toy_root, run_copy, "trainer.max_steps=6", "model.width=16"),
                 "--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "in the checkpoint but" in err and "model.width" in err
    assert snapshot(run_copy) == before
    assert main([*train_args(toy_root, run_copy, "trainer.max_steps=4"), "--resume", "auto"]) == 2
    assert "already at iteration 4 >= trainer.max_steps=4" in capsys.readouterr().err
    assert snapshot(run_copy) == before


def test_resume_appends_to_metrics_csv_and_keeps_the_best(toy_root, run_copy):
    old = rows(run_copy)
    old_steps = [int(r["step"]) for r in old]
    assert main([*train_args(toy_root, run_copy, "trainer.max_steps=6"), "--resume", "auto"]) == 0
    new = rows(run_copy)
    added = new[len(old):]
    assert len(new) == len(old) + len(added) and added
    assert [{k: r.get(k, "") for k in old[0]} for r in new[:len(old)]] == old  # rows kept as were
    assert min(int(r["step"]) for r in added) > max(old_steps)  # then the resumed iterations
    assert "max_steps: 6" in (run_copy / "config.yaml").read_text()
    val = [float(r["val/mIoU"]) for r in new if r.get("val/mIoU")]
    assert len(val) == 3  # iterations 2, 4 (first run) and 6 (resumed)
    assert recorded_best(run_copy / "checkpoints" / "best.ckpt") == pytest.approx(max(val), abs=1e-4)


class FakeTrainer:
    """What AtomicCheckpoint uses of a Trainer; save_checkpoint writes a real small checkpoint
    (or fails after a partial write, like a full disk)."""
    is_global_zero, sanity_checking = True, False
    state = SimpleNamespace(fn="fit")
    strategy = SimpleNamespace(barrier=lambda name=None: None)
    max_steps, global_step, world_size = 100, 4, 1

    def __init__(self, callback, module, fail=False, weight=0.0):
        self.callback, self.module, self.fail = callback, module, fail
        self.lightning_module = torch.nn.BatchNorm1d(2)  # the state checked before each save
        self.lightning_module.running_var.fill_(1.0 + weight)

    def save_checkpoint(self, path, weights_only=False):
        if self.fail:
            Path(path).write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        ckpt = {"state_dict": {"w": torch.zeros(2)}}
        self.callback.on_save_checkpoint(self, self.module, ckpt)
        torch.save(ckpt, path)


def validate(callback, miou, fail=False, weight=0.0):
    module = SimpleNamespace(last_results={"mIoU": miou}, iteration=4)
    callback.on_validation_end(FakeTrainer(callback, module, fail, weight), module)


def test_best_ckpt_is_only_replaced_by_a_better_model(tmp_path):
    validate(AtomicCheckpoint(tmp_path), 8.34)
    best = tmp_path / "best.ckpt"
    assert recorded_best(best) == 8.34
    kept = best.read_bytes()
    cb = AtomicCheckpoint(tmp_path)  # a resumed run: reads the recorded best
    assert cb.best == 8.34
    cb.load_state_dict({"best": 1.0})  # an older value in a checkpoint never lowers it
    assert cb.best == 8.34
    validate(cb, 1.46)
    assert best.read_bytes() == kept
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["uda"]["val_mIoU"] == 1.46
    validate(cb, 9.5)
    assert recorded_best(best) == 9.5 and cb.best == 9.5


def test_no_checkpoint_is_written_from_a_non_finite_state(tmp_path):
    from uda.nonfinite import NonFiniteStateError
    validate(AtomicCheckpoint(tmp_path), 5.0)
    kept = {p: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(NonFiniteStateError, match=r"1 parameter/buffer tensor\(s\) "
                                                  r"\(running_var\) at iteration 4"):
        validate(AtomicCheckpoint(tmp_path), 9.0, weight=float("inf"))  # better, but inf
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == kept


def test_failed_writes_leave_no_temp_file(tmp_path, monkeypatch):
    validate(AtomicCheckpoint(tmp_path), 5.0)
    kept = {p: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(OSError, match="No space left"):
        validate(AtomicCheckpoint(tmp_path), 7.0, fail=True)
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == kept  # no .best.ckpt.tmp

    target = tmp_path / "config.yaml"
    target.write_text("old\n")

    def full_disk(self, text):
        open(self, "w").write(text[:2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_text_atomic(target, "new config\n")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "config.yaml", "last.ckpt"]
    assert target.read_text() == "old\n"


def test_sigterm_exits_interrupted_without_validating(toy_root, tmp_path, monkeypatch, capsys):
    original = uda.build.build_trainer

    def with_sigterm(*a, **k):
        trainer = original(*a, **k)
        trainer.callbacks.insert(0, kill_at(2))
        return trainer

    monkeypatch.setattr(uda.build, "build_trainer", with_sigterm)
    try:
        rc = main(train_args(toy_root, tmp_path, "trainer.max_steps=6", "trainer.val_every=3"))
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert rc == EXIT_INTERRUPTED == 3
    out = capsys.readouterr().out
    assert "stopped by SIGTERM at iteration 2" in out and "--resume auto (exit code 3)" in out
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["uda"]["step"] == 2
    assert not (tmp_path / "results.json").exists()
    assert not any(r.get("val/mIoU") for r in rows(tmp_path))  # stopped without validating


def test_ctrl_c_checkpoints_and_exits_interrupted(toy_root, tmp_path):
    """Ctrl-C as a terminal sends it: SIGINT to the whole process group (loader worker too)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = train_args(toy_root, tmp_path, "trainer.max_steps=1000", "trainer.val_every=1000",
                      "run.checkpoint_every=1", "data.num_workers=1")
    proc = subprocess.Popen([sys.executable, "-m", "uda", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "checkpoints" / "iter-0000001.ckpt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == EXIT_INTERRUPTED, out
    assert "stopped by SIGINT at iteration" in out and "--resume auto" in out
    step = int(out.split("stopped by SIGINT at iteration ")[1].split(";")[0])
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert 1 <= step < 1000 and last["uda"]["step"] == step
    assert "Traceback" not in out and not list(tmp_path.rglob("*.tmp"))


@pytest.fixture
def broken_source(toy_root, tmp_path) -> Path:
    """The toy source with every image truncated: the first training batch cannot be decoded."""
    src = tmp_path / "broken_source"
    shutil.copytree(toy_root / "source", src)
    for f in (src / "images").glob("*.png"):
        f.write_bytes(f.read_bytes()[:100])
    return src


def test_a_run_failing_at_start_leaves_no_stub_folder(toy_root, tmp_path, broken_source, capsys):
    run = tmp_path / "new" / "deeper" / "run"
    assert main(train_args(toy_root, run, "trainer.max_steps=2",
                           f"data.source.root={broken_source}")) == 2
    out, err = capsys.readouterr()
    assert err.startswith("uda: error: ") and "cannot decode image" in err
    assert f"removed what this run had created in {run}" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken_source"]  # no new/deeper/run


def test_a_failed_start_removes_only_what_it_created(toy_root, tmp_path, broken_source):
    """In a folder that existed (a user's files in it, even in logs/): those stay as they were."""
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    (run / "notes.txt").write_text("mine\n")
    (run / "logs" / "old.txt").write_text("old\n")
    before = snapshot(run)
    assert main(train_args(toy_root, run, "trainer.max_steps=2",
                           f"data.source.root={broken_source}")) == 2
    assert snapshot(run) == before
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == [
        "logs", "logs/old.txt", "notes.txt"]


def test_multi_process_run_prints_the_global_batch(toy_root, tmp_path, monkeypatch, capsys):
    """trainer.devices=3 on CPU: the start summary gives the global batch (the fit itself is cut
    short by the test, which also shows that a crash before any checkpoint leaves no stub
    folder)."""
    original = uda.build.build_trainer

    def no_fit(*a, **k):
        trainer = original(*a, **k)
        monkeypatch.setattr(trainer, "fit", lambda *a, **k: (_ for _ in ()).throw(
            RuntimeError("fit stopped by the test")))
        return trainer

    monkeypatch.setattr(uda.build, "build_trainer", no_fit)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="fit stopped by the test"):
        main(train_args(toy_root, run, "trainer.devices=3", "trainer.accelerator=cpu"))
    out = capsys.readouterr().out
    assert out.count("global batch") == 1
    assert "batch 2 per process x 3 processes = global batch 6 per domain" in out
    assert not run.exists()


def test_one_process_prints_no_global_batch(toy_root, tmp_path):
    from conftest import shrunk_config
    from uda.run_summary import start_summary
    cfg = shrunk_config(toy_root, tmp_path, "source_only")
    dm = uda.build.build_datamodule(cfg)
    dm.setup("fit")
    text = start_summary(cfg, tmp_path, dm, uda.build.build_trainer(cfg, tmp_path, []))
    assert "global batch" not in text and ", batch 2; " in text

