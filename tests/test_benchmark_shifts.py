"""`uda benchmark toy --shifts`: the summary over toy target appearances (pure math on hand-made
numbers) and the runner with `uda.train.train` and the data generator faked (no training)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import datamodules.toy
import uda.benchmark
import uda.train
from datamodules.image_io import DatasetError
from uda.benchmark import benchmark_toy, format_shift_summary, summarize_shifts
from uda.cli import main
from uda.config import ConfigError


def _rows(**means):
    return {m: {"mIoU_mean": v} for m, v in means.items()}


PER_SHIFT = {0: _rows(source_only=10.0, adversarial=20.0, dranet=35.0, oracle=30.0),
             1: _rows(source_only=20.0, adversarial=15.0, dranet=30.0, oracle=40.0)}


def test_summary_gap_recovered_and_beats_source_only():
    s = summarize_shifts(PER_SHIFT)
    assert s["shifts"] == ["0", "1"]
    r = s["methods"]
    assert list(r) == ["source_only", "adversarial", "dranet", "oracle"]
    assert r["adversarial"]["mIoU"] == {"0": 20.0, "1": 15.0}
    assert r["adversarial"]["mIoU_mean"] == pytest.approx(17.5)
    assert r["adversarial"]["gap_recovered"] == pytest.approx({"0": .5, "1": -.25})
    assert r["adversarial"]["gap_recovered_mean"] == pytest.approx(.125)
    assert r["dranet"]["gap_recovered"] == pytest.approx({"0": 1.25, "1": .5})
    assert r["dranet"]["gap_recovered_mean"] == pytest.approx(.875)
    assert (r["adversarial"]["beats_source_only"], r["adversarial"]["shifts_compared"]) == (1, 2)
    assert (r["dranet"]["beats_source_only"], r["oracle"]["beats_source_only"]) == (2, 2)
    for base in ("source_only", "oracle"):
        assert "gap_recovered" not in r[base]
    assert "beats_source_only" not in r["source_only"]
    assert r["oracle"]["mIoU_mean"] == pytest.approx(35.0)


def test_summary_edge_cases():
    # oracle == source-only on a shift: the gap is undefined there, the mean uses the others
    s = summarize_shifts({0: _rows(source_only=10.0, a=12.0, oracle=10.0),
                          1: _rows(source_only=10.0, a=14.0, oracle=20.0)})["methods"]["a"]
    assert s["gap_recovered"] == {"0": None, "1": pytest.approx(.4)}
    assert s["gap_recovered_mean"] == pytest.approx(.4)
    # no oracle: beats but no gap; no source-only: neither
    s = summarize_shifts({0: _rows(source_only=10.0, a=12.0), 3: _rows(source_only=10.0, a=9.0)})
    assert s["shifts"] == ["0", "3"]
    assert "gap_recovered" not in s["methods"]["a"] and s["methods"]["a"]["beats_source_only"] == 1
    s = summarize_shifts({0: _rows(a=12.0, oracle=30.0)})["methods"]
    assert set(s["a"]) == {"mIoU", "mIoU_mean"}
    # partial results: a method missing on a shift is averaged over the shifts it has
    s = summarize_shifts({0: _rows(source_only=10.0, a=20.0, oracle=30.0),
                          1: _rows(source_only=20.0)})["methods"]
    assert s["a"]["mIoU"] == {"0": 20.0} and s["a"]["gap_recovered_mean"] == pytest.approx(.5)
    assert s["source_only"]["mIoU_mean"] == pytest.approx(15.0)
    assert s["a"]["shifts_compared"] == 1


def test_format_shift_summary():
    md = format_shift_summary(summarize_shifts(PER_SHIFT))
    lines = md.splitlines()
    assert lines[0] == ("| method | shift 0 mIoU | shift 1 mIoU | mean mIoU over shifts | shift 0 gap "
                        "recovered | shift 1 gap recovered | mean gap recovered over shifts |")
    assert "| adversarial | 20.0 | 15.0 | 17.5 | 0.50 | -0.25 | 0.12 |" in lines
    assert "| source_only | 10.0 | 20.0 | 15.0 | - | - | - |" in lines
    assert "| oracle | 30.0 | 40.0 | 35.0 | - | - | - |" in lines
    assert "- adversarial beats source-only on 1 of 2 shifts" in lines
    assert "- oracle beats source-only on 2 of 2 shifts" in lines
    assert not any(line.startswith("- source_only") for line in lines)


MIOU = {("0", "source_only"): 10.0, ("0", "adversarial"): 16.0, ("0", "oracle"): 30.0,
        ("1", "source_only"): 20.0, ("1", "adversarial"): 18.0, ("1", "oracle"): 40.0}


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Fake train (mIoU from MIOU + seed, records each run) and make_toy (records, writes meta)."""
    calls = {"train": [], "make_toy": []}

    def train(cfg, resume=None):
        run = Path(cfg.run.dir)
        shift = run.parts[-3].removeprefix("shift")
        calls["train"].append((run.relative_to(tmp_path / "out").as_posix(), cfg.data.source.root,
                               cfg.data.target.root))
        if calls.get("fail_at") == (shift, run.parts[-2]):
            raise RuntimeError("simulated crash")
        res = {"mIoU": MIOU[shift, run.parts[-2]] + cfg.seed, "per_class_iou": {"car": 1.0}}
        run.mkdir(parents=True, exist_ok=True)
        (run / "results.json").write_text(json.dumps(res))  # as uda.train does
        return res

    def make_toy(out, shift=None, **kw):
        calls["make_toy"].append((Path(out), shift, kw))
        Path(out).mkdir(parents=True)
        (Path(out) / "toy_meta.json").write_text(json.dumps({"shift": shift}))

    monkeypatch.setattr(uda.train, "train", train)
    monkeypatch.setattr(datamodules.toy, "make_toy", make_toy)
    return calls


def test_benchmark_over_shifts_writes_json_and_md(fake, tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "out"
    (data / "shift0").mkdir(parents=True)  # already there: not regenerated
    (data / "shift0/toy_meta.json").write_text(json.dumps({"shift": 0}))
    res = benchmark_toy(2, ["source_only", "adversarial", "oracle"], str(data), str(out),
                        shifts=[0, 1])
    assert fake["make_toy"] == [(data / "shift1", 1, {"spurious_cue": False, "cue_conflicting": 0.0})]
    runs = [r for r, _, _ in fake["train"]]
    assert runs == [f"shift{k}/{m}/seed{s}" for k in (0, 1)
                    for m in ("source_only", "adversarial", "oracle") for s in (0, 1)]
    assert all(src == str(data / r.split("/")[0] / "source") and tgt == str(data / r.split("/")[0] / "target")
               for r, src, tgt in fake["train"])
    saved = json.loads((out / "benchmark.json").read_text())
    assert saved == json.loads(json.dumps(res))
    assert set(saved["shifts"]) == {"0", "1"}
    row = saved["shifts"]["0"]["adversarial"]
    assert row["mIoU"] == [16.0, 17.0] and row["mIoU_mean"] == pytest.approx(16.5)
    adv = saved["summary"]["methods"]["adversarial"]
    assert adv["mIoU"] == {"0": 16.5, "1": 18.5}
    # (16.5 - 10.5) / (30.5 - 10.5) = 0.3 ; (18.5 - 20.5) / (40.5 - 20.5) = -0.1
    assert adv["gap_recovered"] == pytest.approx({"0": .3, "1": -.1})
    assert adv["gap_recovered_mean"] == pytest.approx(.1)
    assert adv["beats_source_only"] == 1 and adv["shifts_compared"] == 2
    md = (out / "benchmark.md").read_text()
    assert md.startswith("# Toy benchmark over shifts 0, 1\n")
    assert "| adversarial | 16.5 | 18.5 | 17.5 | 0.30 | -0.10 | 0.10 |" in md
    assert "- adversarial beats source-only on 1 of 2 shifts" in md
    assert md.index("## Summary") < md.index("## Shift 0") < md.index("## Shift 1")
    assert "| adversarial | 16.5 +- 0.7 | 16.0, 17.0 |" in md  # per-shift table, existing format
    assert "## Shift 1" in capsys.readouterr().out


def test_partial_results_survive_a_crash(fake, tmp_path):
    fake["fail_at"] = ("1", "oracle")
    with pytest.raises(RuntimeError, match="simulated"):
        benchmark_toy(1, ["source_only", "adversarial", "oracle"], str(tmp_path / "data"),
                      str(tmp_path / "out"), shifts=[0, 1])
    saved = json.loads((tmp_path / "out/benchmark.json").read_text())
    assert list(saved["shifts"]["0"]) == ["source_only", "adversarial", "oracle"]
    assert list(saved["shifts"]["1"]) == ["source_only", "adversarial"]
    assert saved["summary"]["methods"]["adversarial"]["gap_recovered"] == pytest.approx({"0": .3})
    assert not (tmp_path / "out/benchmark.md").exists()
    # the same command again resumes: finished runs are read back, only the rest trains
    fake["fail_at"], done = None, len(fake["train"])
    res = benchmark_toy(1, ["source_only", "adversarial", "oracle"], str(tmp_path / "data"),
                        str(tmp_path / "out"), shifts=[0, 1])
    assert [r for r, _, _ in fake["train"][done:]] == ["shift1/oracle/seed0"]
    assert res["shifts"]["0"]["oracle"]["mIoU"] == saved["shifts"]["0"]["oracle"]["mIoU"]
    assert (tmp_path / "out/benchmark.md").exists()


def test_refusals_happen_before_training(fake, tmp_path):
    data = tmp_path / "data"
    (data / "shift1").mkdir(parents=True)
    (data / "shift1/toy_meta.json").write_text(json.dumps({"shift": 4}))
    with pytest.raises(DatasetError, match="shift 4, not 1"):
        benchmark_toy(1, ["source_only"], str(data), str(tmp_path / "out"), shifts=[1])
    for bad in ([], [0, 0], [-1], [1.0]):
        with pytest.raises(ConfigError, match="--shifts"):
            benchmark_toy(1, ["source_only"], str(data), str(tmp_path / "out"), shifts=bad)
    with pytest.raises(ConfigError, match="no_such_method"):
        benchmark_toy(1, ["source_only", "no_such_method"], str(data), str(tmp_path / "out"),
                      shifts=[0])
    assert fake["train"] == [] and fake["make_toy"] == []


def test_without_shifts_the_flat_format_is_unchanged(fake, tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    (data / "toy_meta.json").write_text("{}")
    # the flat layout: <out>/<method>/seed<s>; reuse MIOU via a fake "shift0" parent directory
    res = benchmark_toy(1, ["source_only", "oracle"], str(data), str(out / "shift0"))
    assert list(res) == ["source_only", "oracle"] and res["oracle"]["mIoU"] == [30.0]
    assert json.loads((out / "shift0/benchmark.json").read_text()) == res
    assert (out / "shift0/benchmark.md").read_text().startswith("| method | target mIoU")
    assert [r for r, _, _ in fake["train"]] == ["shift0/source_only/seed0", "shift0/oracle/seed0"]


def test_cli_parses_shifts(monkeypatch, tmp_path, capsys):
    got = []
    monkeypatch.setattr(uda.benchmark, "benchmark_toy", lambda *a, **kw: got.append(kw["shifts"]))
    assert main(["benchmark", "toy", "--out", str(tmp_path), "--shifts", "0, 1,3"]) == 0
    assert main(["benchmark", "toy", "--out", str(tmp_path)]) == 0
    assert got == [[0, 1, 3], None]
    assert main(["benchmark", "toy", "--out", str(tmp_path), "--shifts", "0,one"]) == 2
    assert "uda: error: --shifts: expected comma-separated integers" in capsys.readouterr().err
