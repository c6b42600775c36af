"""No import cycles and no imports against the layers among the project's modules
(scripts/check_imports.py, ast only: fast)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import check_imports  # noqa: E402

KNOWN: list = []  # no cycle left (issue 13, item 4)


def test_no_import_cycle():
    assert check_imports.cycles(check_imports.import_edges()) == KNOWN


def test_no_import_against_the_layers():
    """The data layer never imports uda (the atomic writers live in datamodules for that);
    losses and metrics never import models, recipes or the data layer."""
    assert check_imports.layer_violations(check_imports.import_edges()) == []


def test_build_does_not_create_the_translation_callback():
    """The DRANet translation-quality callback needs build (it loads a reference checkpoint):
    train.py creates it (uda.translation_callback.for_config) and hands it to build_trainer."""
    edges = {(e.source, e.target) for e in check_imports.import_edges()}
    assert ("uda.train", "uda.translation_callback") in edges
    assert not any(s == "uda.build" and t == "uda.translation_callback" for s, t in edges)


def test_build_does_not_import_the_evaluation_commands():
    """`uda evaluate` / `uda predict` get their objects from build; build never imports them."""
    edges = {(e.source, e.target) for e in check_imports.import_edges()}
    commands = ("uda.evaluation.evaluate_checkpoint", "uda.evaluation.predict_files")
    assert ("uda.build", "uda.checkpoint_io") in edges
    assert all((c, "uda.build") in edges for c in commands)
    assert not any(s == "uda.build" and t in commands for s, t in edges)


def test_script_reports_a_function_level_cycle(tmp_path):
    (tmp_path / "uda").mkdir()
    (tmp_path / "datamodules").mkdir()
    (tmp_path / "uda" / "__init__.py").write_text("")
    (tmp_path / "datamodules" / "__init__.py").write_text("")
    (tmp_path / "uda" / "a.py").write_text("from uda import b\n")
    (tmp_path / "uda" / "b.py").write_text("def f():\n    from .a import g\n")
    (tmp_path / "datamodules" / "c.py").write_text("import uda.a\n")
    edges = check_imports.import_edges(tmp_path)
    assert {(e.source, e.target, e.line, e.level) for e in edges} == {
        ("uda.a", "uda.b", 1, "module"), ("uda.b", "uda.a", 2, "function"),
        ("datamodules.c", "uda.a", 1, "module")}
    assert check_imports.cycles(edges) == [["uda.a", "uda.b"]]
    assert [(e.source, e.target) for e in check_imports.layer_violations(edges)] == [
        ("datamodules.c", "uda.a")]
    assert check_imports.main([], root=tmp_path) == 1


def test_a_layer_violation_alone_fails_the_script(tmp_path, capsys):
    for pkg in ("uda", "uda/losses", "uda/models", "datamodules"):
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "uda" / "models" / "net.py").write_text("X = 1\n")
    (tmp_path / "uda" / "losses" / "ce.py").write_text(
        "def f():\n    from uda.models.net import X\n")
    assert check_imports.main([], root=tmp_path) == 1
    out = capsys.readouterr().out
    assert "uda.losses.ce -> uda.models.net" in out and out.rstrip().endswith(
        "0 cycle(s), 1 layer violation(s)")


def test_script_exit_code_and_summary():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_imports.py")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == (1 if KNOWN else 0)
    assert out.stdout.splitlines()[-1].endswith(f"{len(KNOWN)} cycle(s), 0 layer violation(s)")
    assert "uda.build -> uda.evaluation" not in out.stdout
