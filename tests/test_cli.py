"""The command line itself: parsing imports nothing heavy."""
import subprocess
import sys

import pytest

from conftest import REPO

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
                                       (["trian"], 2)])
def test_parsing_imports_no_torch_or_lightning(args, code):
    r = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-2:] == [f"exit {code}", "loaded []"]
