"""Output paths are checked before any work: an unwritable run.dir, --output, --export, --out
... is one `uda: error:` line naming the path (exit 2), before a checkpoint is read, a model
built or data loaded, and nothing is created."""
import os
import subprocess
from pathlib import Path

import pytest

import uda.build
from conftest import REPO
from uda.cli import main
from uda.config import ConfigError
from uda.output_paths import check_output_dir, check_output_file


@pytest.fixture
def blocker(tmp_path) -> Path:
    """A file standing where a folder is needed."""
    f = tmp_path / "a_file"
    f.write_text("mine\n")
    return f


@pytest.fixture
def read_only(tmp_path) -> Path:
    """A folder nobody may write in: mode 0555, and immutable when the tests run as root (root
    ignores permission bits; chattr +i also stops root). Skipped where neither works."""
    d = tmp_path / "read_only"
    d.mkdir()
    (d / "kept.txt").write_text("kept\n")
    d.chmod(0o555)
    immutable = False
    if os.access(d, os.W_OK):
        immutable = subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0
        if not immutable or os.access(d, os.W_OK):
            d.chmod(0o755)
            pytest.skip("cannot make a read-only folder here (root without chattr)")
    yield d
    if immutable:
        subprocess.run(["chattr", "-i", str(d)], check=True)
    d.chmod(0o755)


def listing(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def test_writable_paths_pass_and_create_nothing(tmp_path):
    check_output_dir(tmp_path / "new" / "deeper", "--out", "fix")
    check_output_file(tmp_path / "new" / "r.json", "--output", "fix")
    check_output_dir(tmp_path, "run.dir", "fix")
    assert list(tmp_path.iterdir()) == []


def test_blocked_paths_name_the_path_and_the_reason(blocker, read_only):
    with pytest.raises(ConfigError) as e:
        check_output_dir(blocker / "run", "run.dir", "choose another run.dir=...")
    assert str(e.value) == (f"run.dir={blocker / 'run'}: cannot write there: {blocker} is a file, "
                            "not a folder; choose another run.dir=...")
    with pytest.raises(ConfigError, match=f"--export {blocker}: .* is a file, not a folder"):
        check_output_dir(blocker, "--export", "fix")
    with pytest.raises(ConfigError, match=f"--output {read_only.parent}: .* is a folder, not a "
                                          "file"):
        check_output_file(read_only.parent, "--output", "fix")
    with pytest.raises(ConfigError, match=f"{read_only} is not writable \\(cannot create "):
        check_output_file(read_only / "sub" / "r.json", "--output", "fix")
    with pytest.raises(ConfigError, match=f"--out {read_only}: cannot write there: {read_only} "
                                          "is not writable; fix"):
        check_output_dir(read_only, "--out", "fix")


def train_args(toy_root, run_dir):
    return ["train", "--config", str(REPO / "configs/toy/source_only.yaml"),
            f"data.source.root={toy_root / 'source'}", f"data.target.root={toy_root / 'target'}",
            f"run.dir={run_dir}", "trainer.max_steps=2", "data.num_workers=0"]


@pytest.mark.parametrize("fixture,below", [("blocker", "run"), ("read_only", "run"),
                                            ("read_only", None)])
def test_unwritable_run_dir_fails_before_any_work(toy_root, tmp_path, monkeypatch, capsys,
                                                  request, fixture, below):
    def no_work(*a, **k):
        raise AssertionError("data or model built before the run.dir check")

    monkeypatch.setattr(uda.build, "build_datamodule", no_work)
    monkeypatch.setattr(uda.build, "build_module", no_work)
    run_dir = request.getfixturevalue(fixture)
    run_dir = run_dir / below if below else run_dir
    before = listing(tmp_path)
    assert main(train_args(toy_root, run_dir)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"uda: error: run.dir={run_dir}: cannot write there: ")
    assert "choose a writable run.dir=..." in err and err.count("\n") == 1
    assert listing(tmp_path) == before


def test_run_dir_is_checked_inside_train_too(toy_root, tmp_path, blocker, monkeypatch):
    """`uda benchmark` and other callers of train() get the check as well."""
    from uda.config import load_config
    from uda.train import train
    monkeypatch.setattr(uda.build, "build_datamodule", lambda *a: 1 / 0)
    overrides = train_args(toy_root, blocker / "r")[3:]
    cfg = load_config(REPO / "configs/toy/source_only.yaml", overrides)
    with pytest.raises(ConfigError, match="run.dir=.*is a file, not a folder"):
        train(cfg)


def command_lines(blocker: Path, tmp_path: Path) -> list[tuple[list[str], str]]:
    """(argv, the option and path the error must name) for each command's output options; the
    inputs do not exist, so the output check must come first to be the one reported."""
    ckpt, inp = str(tmp_path / "missing.ckpt"), str(tmp_path / "missing_input")
    bad_file, bad_dir = str(blocker / "out.json"), str(blocker / "out")
    return [
        (["evaluate", "--checkpoint", ckpt, "--output", bad_file], f"--output {bad_file}"),
        (["evaluate", "--checkpoint", ckpt, "--output", str(tmp_path)], f"--output {tmp_path}"),
        (["evaluate", "--checkpoint", ckpt, "--export", bad_dir], f"--export {bad_dir}"),
        (["predict", "--checkpoint", ckpt, "--input", inp, "--output", bad_dir],
         f"--output {bad_dir}"),
        (["translate", "--checkpoint", ckpt, "--input", inp, "--output", bad_dir],
         f"--output {bad_dir}"),
        (["translate", "--checkpoint", ckpt, "--input", inp, "--score", "--reference", ckpt,
          "--score-output", bad_file], f"--score-output {bad_file}"),
        (["evaluate-dir", "--pred", inp, "--gt-root", inp, "--output", bad_file],
         f"--output {bad_file}"),
        (["data", "check", "--dataset", "gta5", "--root", inp, "--split", "train",
          "--output", bad_file], f"--output {bad_file}"),
        (["data", "make-toy", "--out", str(blocker)], f"--out {blocker}"),
        (["benchmark", "toy", "--out", bad_dir, "--data", inp], f"--out {bad_dir}"),
        (["benchmark", "toy", "--out", str(tmp_path / "bench"), "--data", bad_dir],
         f"--data {bad_dir}"),
    ]


def test_every_output_option_is_checked_first(blocker, tmp_path, capsys):
    for argv, named in command_lines(blocker, tmp_path):
        before = listing(tmp_path)
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"uda: error: {named}: cannot write there: "), (argv, err)
        assert err.count("\n") == 1 and "give a writable" in err
        assert listing(tmp_path) == before, argv


def test_existing_toy_data_need_not_be_writable(toy_root, read_only, tmp_path, capsys,
                                                monkeypatch):
    """benchmark --data is only written when the data are absent: read-only data are fine."""
    import uda.benchmark
    monkeypatch.setattr(uda.benchmark, "benchmark_toy", lambda *a, **k: {})
    assert main(["benchmark", "toy", "--out", str(tmp_path / "b"), "--data", str(toy_root)]) == 0
    assert main(["benchmark", "toy", "--out", str(read_only / "b"),
                 "--data", str(toy_root)]) == 2
    assert f"--out {read_only / 'b'}: cannot write there" in capsys.readouterr().err
