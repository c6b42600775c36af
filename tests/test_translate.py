"""`uda translate`: source set in the target style, same layout, labels copied byte for byte."""
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, SHRINK
from datamodules.datasets import GTA5Dataset
from uda.cli import main

TINY = [*SHRINK, "trainer.max_steps=2"]


def train(method, toy_root, run):
    assert main(["train", "--config", str(REPO / f"configs/toy/{method}.yaml"),
                 f"data.source.root={toy_root / 'source'}",
                 f"data.target.root={toy_root / 'target'}", f"run.dir={run}", *TINY]) == 0
    return run / "checkpoints" / "last.ckpt"


def test_translate_writes_same_layout_with_original_labels(toy_root, tmp_path):
    ckpt = train("dranet", toy_root, tmp_path / "run")
    out = tmp_path / "translated"
    assert main(["translate", "--checkpoint", str(ckpt), "--input", str(toy_root / "source"),
                 "--output", str(out), "--num-styles", "3"]) == 0
    src, dst = GTA5Dataset(toy_root / "source"), GTA5Dataset(out)
    assert [s.name for s in src.samples] == [s.name for s in dst.samples]
    for a, b in zip(src.samples, dst.samples):
        assert a.label.read_bytes() == b.label.read_bytes()
        ia, ib = np.asarray(Image.open(a.image)), np.asarray(Image.open(b.image))
        assert ia.shape == ib.shape and not np.array_equal(ia, ib)
    assert main(["data", "check", "--dataset", "gta5", "--root", str(out), "--split", "train"]) == 0


def test_translate_needs_a_dranet_checkpoint(toy_root, tmp_path, capsys):
    ckpt = train("source_only", toy_root, tmp_path / "run")
    assert main(["translate", "--checkpoint", str(ckpt), "--input", str(toy_root / "source"),
                 "--output", str(tmp_path / "o")]) == 2
    assert "translate needs a DRANet checkpoint" in capsys.readouterr().err


def test_benchmark_toy_table(toy_root, tmp_path, capsys):
    import json
    rc = main(["benchmark", "toy", "--seeds", "2", "--methods", "source_only,oracle",
               "--data", str(toy_root), "--out", str(tmp_path), *TINY])
    assert rc == 0
    rows = json.loads((tmp_path / "benchmark.json").read_text())
    assert set(rows) == {"source_only", "oracle"}
    for r in rows.values():
        assert len(r["mIoU"]) == 2 and r["mIoU_mean"] == pytest.approx(sum(r["mIoU"]) / 2)
    seed1 = json.loads((tmp_path / "oracle" / "seed1" / "results.json").read_text())
    assert seed1["mIoU"] == rows["oracle"]["mIoU"][1]
    assert "| oracle |" in (tmp_path / "benchmark.md").read_text()


def test_benchmark_toy_reports_a_class_iou_from_a_config_dir(toy_root, tmp_path):
    import json
    rc = main(["benchmark", "toy", "--seeds", "1", "--methods", "source_only",
               "--config-dir", str(REPO / "configs/toy/cue"), "--class-iou", "car",
               "--data", str(toy_root), "--out", str(tmp_path), *TINY])
    assert rc == 0
    row = json.loads((tmp_path / "benchmark.json").read_text())["source_only"]
    seed0 = json.loads((tmp_path / "source_only" / "seed0" / "results.json").read_text())
    assert row["class_iou"] == [seed0["per_class_iou"]["car"] or 0.0]
    assert "car IoU" in (tmp_path / "benchmark.md").read_text()


# --- translation quality: `uda translate --score` and the training callback ----------------------
@pytest.fixture
def on_cpu(monkeypatch):
    """`uda translate` uses the GPU when there is one; the exact comparisons with independent CPU
    computations below need the CPU."""
    import torch
    import uda.translate
    monkeypatch.setattr(uda.translate, "default_device", lambda: torch.device("cpu"))


@pytest.fixture(scope="module")
def runs(toy_root, tmp_path_factory):
    """A tiny DRANet run and a tiny oracle run (the reference), trained once for this module."""
    base = tmp_path_factory.mktemp("quality_runs")
    return {m: train(m, toy_root, base / m) for m in ("dranet", "oracle")}


def _reference_miou_on_files(reference_ckpt, root):
    """The reference's mIoU on a GTA5-layout folder, computed without uda.translation_quality."""
    import torch
    from datamodules.transforms import transform_from_config
    from uda.build import load_module
    from uda.checkpoint_io import config_for, read_checkpoint
    from uda.metrics import confusion_matrix, mean_iou
    ckpt = read_checkpoint(reference_ckpt)
    cfg = config_for(ckpt, reference_ckpt)
    module = load_module(ckpt, cfg, reference_ckpt)
    ds = GTA5Dataset(root, labelled=True,
                     transform=transform_from_config(cfg.data.eval_transform, train=False))
    cm = torch.zeros(19, 19, dtype=torch.long)
    with torch.no_grad():
        for i in range(len(ds)):
            item = ds[i]
            pred = module.predict_labels(item["image"][None], tuple(item["mask"].shape))
            cm += confusion_matrix(pred[0], item["mask"], 19)
    return 100.0 * mean_iou(cm)


def test_translate_score_writes_and_scores(toy_root, runs, tmp_path, capsys, on_cpu):
    import json
    out, scores = tmp_path / "translated", tmp_path / "scores.json"
    assert main(["translate", "--checkpoint", str(runs["dranet"]), "--input",
                 str(toy_root / "source"), "--output", str(out), "--num-styles", "3", "--score",
                 "--reference", str(runs["oracle"]), "--score-output", str(scores)]) == 0
    printed = capsys.readouterr().out
    assert "FCN-score" in printed and "gap closed" in printed
    r = json.loads(scores.read_text())
    assert r["num_source_images"] == 12 and r["num_target_images"] == 5
    assert r["reference_method"] == "oracle"
    for key in ("reference_miou_target_val", "reference_miou_source", "fcn_score",
                "fcn_score_pct_of_target"):
        assert isinstance(r[key], float)
    for part in ("style", "colour", "texture"):
        for key in ("fd_source_target", "fd_translated_target", "gap_closed"):
            assert isinstance(r["style"][f"{part}_{key}"], float)
    s = r["style"]
    assert s["style_gap_closed"] == pytest.approx(
        1 - s["style_fd_translated_target"] / s["style_fd_source_target"])
    assert r["fcn_score"] == r["results"]["translated_source"]["mIoU"]
    assert r["fcn_score_pct_of_target"] == pytest.approx(
        100 * r["fcn_score"] / r["reference_miou_target_val"])
    # FCN-score == the reference's mIoU on the written translated files, computed independently;
    # untranslated source likewise on the source files
    assert r["fcn_score"] == pytest.approx(_reference_miou_on_files(runs["oracle"], out), abs=1e-9)
    assert r["reference_miou_source"] == pytest.approx(
        _reference_miou_on_files(runs["oracle"], toy_root / "source"), abs=1e-9)
    # the target-val number is the reference's own `uda evaluate` result
    assert main(["evaluate", "--checkpoint", str(runs["oracle"]), "--output",
                 str(tmp_path / "ev.json")]) == 0
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert r["reference_miou_target_val"] == pytest.approx(ev["mIoU"], abs=1e-9)


def test_translate_score_with_identity_translation_equals_the_source(toy_root, runs, tmp_path,
                                                                    monkeypatch, on_cpu):
    import json
    import uda.translate
    monkeypatch.setattr(uda.translate, "translate_frame",
                        lambda module, x, bank: module.to_display(x.to(module.device)))
    scores = tmp_path / "s.json"
    assert main(["translate", "--checkpoint", str(runs["dranet"]), "--input",
                 str(toy_root / "source"), "--score", "--reference", str(runs["oracle"]),
                 "--num-images", "5", "--num-styles", "2", "--score-output", str(scores)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]  # no --output: no images
    r = json.loads(scores.read_text())
    assert r["num_source_images"] == 5
    assert r["fcn_score"] == r["reference_miou_source"]
    assert r["results"]["translated_source"]["confusion_matrix"] == \
        r["results"]["source"]["confusion_matrix"]
    s = r["style"]
    assert s["style_fd_translated_target"] == pytest.approx(s["style_fd_source_target"], rel=1e-9)
    assert s["style_gap_closed"] == pytest.approx(0.0, abs=1e-9)


def test_translate_score_bad_input(toy_root, runs, tmp_path, capsys):
    import torch
    src = str(toy_root / "source")
    not_seg = tmp_path / "not_seg.ckpt"
    torch.save({"state_dict": {"translator.w": torch.zeros(1)}, "uda": {"config": "seed: 0\n"}},
               not_seg)
    cases = [
        (["--checkpoint", str(runs["dranet"]), "--score", "--reference", str(tmp_path / "nope")],
         "checkpoint not found"),
        (["--checkpoint", str(runs["dranet"]), "--score", "--reference", str(not_seg)],
         "holds no segmenter weights"),
        (["--checkpoint", str(runs["dranet"]), "--score", "--reference", str(toy_root / "source"
                                                                             / "labels")],
         "reference"),
        (["--checkpoint", str(runs["oracle"]), "--score", "--reference", str(runs["oracle"])],
         "translate needs a DRANet checkpoint"),
        (["--checkpoint", str(runs["dranet"]), "--score"], "--score needs --reference"),
        (["--checkpoint", str(runs["dranet"])], "--output is required"),
        (["--checkpoint", str(runs["dranet"]), "--output", str(tmp_path / "o"), "--reference",
          str(runs["oracle"])], "only with --score"),
    ]
    for args, message in cases:
        assert main(["translate", "--input", src, *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("uda: error:") and message in err and err.count("\n") == 1, err


def test_translation_reference_must_exist(toy_root, tmp_path):
    from conftest import shrunk_config
    from uda.config import ConfigError
    with pytest.raises(ConfigError, match="eval.translation_reference: checkpoint .* not found"):
        shrunk_config(toy_root, tmp_path, "dranet", f"eval.translation_reference={tmp_path}/x.ckpt")
    with pytest.raises(ConfigError, match="eval.translation_images must be >= 0"):
        shrunk_config(toy_root, tmp_path, "dranet", "eval.translation_images=-1")


def test_callback_logs_translation_quality_during_training(toy_root, runs, tmp_path):
    import csv
    from conftest import shrunk_config
    from uda.train import train as train_run
    cfg = shrunk_config(toy_root, tmp_path, "dranet", "logger.name=csv",
                        f"eval.translation_reference={runs['oracle']}")
    train_run(cfg)
    rows = list(csv.DictReader(open(tmp_path / "logs" / "metrics.csv")))
    logged = {k for row in rows for k, v in row.items() if v and k.startswith("val_translation/")}
    expected = {f"val_translation/{p}_{k}" for p in ("style", "colour", "texture")
                for k in ("fd_source_target", "fd_translated_target", "gap_closed")}
    expected |= {"val_translation/fcn_score", "val_translation/reference_miou_source",
                 "val_translation/reference_miou_target_val",
                 "val_translation/fcn_score_pct_of_target"}
    assert expected <= logged


def test_callback_is_rank_zero_only_and_restores_the_translator(toy_root, runs, tmp_path):
    from types import SimpleNamespace
    import torch
    from conftest import shrunk_config
    from uda import build
    from uda.translation_callback import TranslationQuality
    cfg = shrunk_config(toy_root, tmp_path, "dranet")
    module, dm = build.build_module(cfg), build.build_datamodule(cfg)
    module.train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    cb = TranslationQuality(num_images=4, num_styles=3, reference=str(runs["oracle"]))
    other_rank = SimpleNamespace(sanity_checking=False, global_rank=1, datamodule=dm)
    cb.on_validation_epoch_end(other_rank, module)  # nothing at all on other ranks
    assert not cb._ready and cb.last_metrics == {}
    rank0 = SimpleNamespace(sanity_checking=False, global_rank=0, datamodule=dm)
    first = cb.evaluate(rank0, module)
    assert module.translator.training and all(m.training for m in module.translator.modules())
    assert all(p.grad is None for p in module.parameters())
    after = module.state_dict()  # eval mode: BatchNorm running statistics untouched
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "fcn_score" in first and "style_gap_closed" in first
    assert cb.evaluate(rank0, module) == first  # deterministic set, cached untranslated sets
