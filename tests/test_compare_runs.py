"""scripts/compare_runs.py: the bit-identity check of two toy benchmark outputs."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("compare_runs",
                                                  REPO / "scripts" / "compare_runs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(root: Path, method: str, miou: float, state: dict) -> None:
    run = root / method / "seed0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"mIoU": miou}))
    torch.save({"state_dict": state}, run / "checkpoints" / "last.ckpt")


def test_identical_runs_pass_and_one_changed_bit_fails(tmp_path, capsys):
    compare = _script()
    state = {"w": torch.arange(6.0).view(2, 3), "n": torch.tensor(3)}
    _run(tmp_path / "a", "source_only", 11.5, state)
    _run(tmp_path / "b", "source_only", 11.5, {k: v.clone() for k, v in state.items()})
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "source_only seed0" in capsys.readouterr().out

    changed = {k: v.clone() for k, v in state.items()}
    changed["w"][1, 2] = torch.nextafter(changed["w"][1, 2], torch.tensor(10.0))  # one ulp
    _run(tmp_path / "c", "source_only", 11.5, changed)
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "c")]) == 1
    assert "DIFFERENT" in capsys.readouterr().out
    assert compare.state_digest(tmp_path / "a" / "source_only" / "seed0" / "checkpoints"
                                / "last.ckpt")[1] == 2


def test_nothing_to_compare_is_a_failure(tmp_path):
    (tmp_path / "a" / "dranet").mkdir(parents=True)
    (tmp_path / "b" / "dranet").mkdir(parents=True)
    assert _script().main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
