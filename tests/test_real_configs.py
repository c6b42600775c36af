"""The recipes' real configs at real shapes, and the benchmark script that runs them
(scripts/bench_methods.py): the recipe runs for real (Lightning Trainer, every optimizer step) on
random frames of the config's own crop and batch, random weights.

The real-shape runs are marked `realscale` (and `slow`): minutes per iteration on a 2-core CPU
and GBs of memory (MiT-B5 at 512x512 with batch 2 + 2: 472 s/iter on a loaded machine, 14.6 GB
peak RSS), so `make test` leaves them out and `make test-real` runs them, with batch 1 + 1 (the
frames at their real shapes) so that the 1024x1024 recipes fit a 24 GB machine."""
import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from bench_methods import bench, config_shapes, item_config  # noqa: E402

RECIPES = ("daformer", "hrda", "mic", "mic_hrda", "vfm", "synthia_cityscapes/vfm")


def test_bench_runs_a_recipe_and_reports_its_figures():
    """Toy size: two iterations of each optimizer step, figures of the right kind."""
    torch.manual_seed(0)
    r = bench("daformer", "toy", iters=2, warmup=0, accelerator="cpu", precision="32-true",
              channels_last=False, crop=(32, 64), batch=1)
    assert (r["name"], r["method"], r["iters"], r["size"]) == ("daformer", "daformer", 2,
                                                               "32x64 batch 1+1")
    assert r["finite"] and r["error"] is None and r["s_per_iter"] > 0 and r["peak_mib"] > 0
    assert r["images_per_s"] == pytest.approx(2 / r["s_per_iter"])


@pytest.mark.slow
@pytest.mark.realscale
@pytest.mark.parametrize("recipe", RECIPES)
def test_real_config_trains_two_iterations_at_real_shapes(recipe):
    """configs/gta5_cityscapes/<recipe>.yaml as shipped (daformer, mic: MiT-B5 + DAFormer head,
    512x512 crops; hrda, mic_hrda: the same network, 1024x1024 crops; vfm: DINOv2 ViT-L,
    1024x1024 crops; SYNTHIA's configs train the same networks on the same crops, but vfm's
    on a ViT-B, run too): two training iterations with finite losses, batch 1 + 1. The method
    of mic_hrda.yaml is mic."""
    torch.manual_seed(0)
    bench_dir, _, recipe = recipe.rpartition("/")
    path = REPO / "configs" / (bench_dir or "gta5_cityscapes") / f"{recipe}.yaml"
    (h, w), _ = config_shapes(item_config(str(path), "real", [])[0])
    # ViT-L at 1024x1024: killed at 24 GB without activation checkpointing, and at 23.3 GB
    # RSS with it after 12 min (not finished); ViT-B (SYNTHIA) with it
    extra = ("model.vit_checkpointing=true",) if recipe == "vfm" else ()
    r = bench(str(path), "real", iters=2, warmup=0, accelerator="cpu", precision="32-true",
              channels_last=False, batch=1, overrides=extra)
    print(f"{recipe}: {r['s_per_iter']:.1f} s/iter, peak RSS {r['peak_mib']:.0f} MiB")
    assert (r["method"], r["iters"], r["size"]) == (recipe.split("_")[0], 2, f"{h}x{w} batch 1+1")
    assert r["finite"], r["nonfinite"]
