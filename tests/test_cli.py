"""The command line itself: parsing imports nothing heavy; bad argument values are usage errors
(argparse's message naming the option, exit 2); config errors are one `uda: error:` line, exit 2."""
import subprocess
import sys

import pytest

from conftest import REPO
from uda.cli import main

HEAVY = ("torch", "pytorch_lightning", "lightning", "numpy", "uda.build", "uda.train")

# runs `python -m uda ARGS` in this interpreter, then prints which heavy modules were imported
PROBE = """
import runpy, sys
sys.argv = ["uda", *sys.argv[1:]]
try:
    runpy.run_module("uda", run_name="__main__", alter_sys=True)
except SystemExit as e:
    print("exit", e.code)
print("loaded", sorted(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize("args,code", [(["--help"], 0), (["train", "--help"], 0),
                                       (["trian"], 2), (["benchmark", "toy", "--seeds", "0"], 2)])
def test_parsing_imports_no_torch_or_lightning(args, code):
    r = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-2:] == [f"exit {code}", "loaded []"]


@pytest.mark.parametrize("args,option,message", [
    (["benchmark", "toy", "--seeds", "0"], "--seeds", "must be >= 1, got 0"),
    (["benchmark", "toy", "--cue-conflicting", "1.5"], "--cue-conflicting", "must be in [0, 1]"),
    (["data", "make-toy", "--out", "x", "--size", "abc"], "--size", "expected HEIGHTxWIDTH"),
    (["data", "make-toy", "--out", "x", "--size", "8x64"], "--size", "must be >= 16"),
    (["data", "make-toy", "--out", "x", "--num-source", "-1"], "--num-source", "must be >= 0"),
    (["data", "make-toy", "--out", "x", "--num-val", "two"], "--num-val", "expected an integer"),
    (["data", "make-toy", "--out", "x", "--seed", "-3"], "--seed", "must be >= 0, got -3"),
    (["data", "make-toy", "--out", "x", "--shift", "-1"], "--shift", "must be >= 0"),
    (["translate", "--checkpoint", "c", "--input", "i", "--num-styles", "0"], "--num-styles",
     "must be >= 1"),
    (["translate", "--checkpoint", "c", "--input", "i", "--score", "--num-images", "-2"],
     "--num-images", "must be >= 1"),
    (["data", "check", "--dataset", "gta5", "--root", "r", "--split", "s", "--workers", "0"],
     "--workers", "must be >= 1"),
    (["evaluate-dir", "--pred", "p", "--gt-root", "g", "--workers", "-1"], "--workers",
     "must be >= 1"),
])
def test_out_of_range_arguments_are_usage_errors(args, option, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: argument {option}: " in err and message in err


def test_in_range_arguments_are_parsed_to_values():
    from uda.cli import make_parser
    a = make_parser().parse_args(["data", "make-toy", "--out", "x", "--size", "64X128",
                                  "--num-source", "0", "--seed", "0", "--shift", "2"])
    assert (a.size, a.num_source, a.seed, a.shift) == ((64, 128), 0, 0, 2)
    a = make_parser().parse_args(["benchmark", "toy", "--seeds", "1", "--cue-conflicting", "1"])
    assert (a.seeds, a.cue_conflicting) == (1, 1.0)


def test_config_error_is_one_line_and_exit_2():
    r = subprocess.run([sys.executable, "-m", "uda", "train", "--config",
                        "configs/toy/source_only.yaml", "data.batch_size=0"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["uda: error: data.batch_size must be >= 1 (images per "
                                     "process and domain in a training step), got 0"]
