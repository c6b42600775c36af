"""scripts/bench_dranet_official.py: our side alone (official checkout absent) at a tiny size,
and both sides when the official checkout is at /tmp/dranet_official."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "bench_dranet_official.py"
OFFICIAL = Path("/tmp/dranet_official")
ROWS = ("peak_mib", "built_mib", "working_set_mib", "s_per_iter", "gflops_per_iter")


def bench(tmp_path, official: Path, size: str) -> tuple[str, dict]:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--official", str(official), "--size", size,
                           "--batch", "1", "--iters", "1", "--warmup", "0", "--json", str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_ours_alone_when_the_official_checkout_is_absent(tmp_path):
    stdout, fig = bench(tmp_path, tmp_path / "no_checkout", "32x64")
    assert "official side skipped" in stdout.splitlines()[0]
    for row in ("peak RSS MiB", "working set MiB", "s/iter", "GFLOPs/iter"):
        assert f"| {row} |" in stdout
    assert all(fig["ours"][k] > 0 for k in ROWS), fig["ours"]
    assert "official" not in fig and all(v is None for v in fig["ratio"].values())
    assert fig["shape"] == [32, 64] and fig["threads"] == 1
    assert set(fig["ours"]["params_m"]) == {"segmenter", "translator", "discriminators",
                                            "perceptual"}


@pytest.mark.slow
@pytest.mark.skipif(not (OFFICIAL / "trainer.py").is_file(), reason=f"no checkout at {OFFICIAL}")
def test_both_sides(tmp_path):  # the official PatchGAN needs frames of at least 64x128
    stdout, fig = bench(tmp_path, OFFICIAL, "64x128")
    assert "skipped" not in stdout
    for side in ("ours", "official"):
        assert all(fig[side][k] > 0 for k in ROWS), fig[side]
    assert all(v > 0 for v in fig["ratio"].values())
    # same roles: DRN-C-26 segmenter (19 classes) on both sides
    assert fig["ours"]["params_m"]["segmenter"] == pytest.approx(
        fig["official"]["params_m"]["segmenter"])
