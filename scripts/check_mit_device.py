#!/usr/bin/env python
"""Checks of the MiT segmenter (uda.models.mit) that need what the CPU test suite lacks.

1. HuggingFace parity (needs `transformers`, not a uda dependency): a randomly initialised HF
   ``SegformerModel`` and ``SegformerForImageClassification`` (MiT-B0 settings) saved with
   ``save_pretrained`` (the hub's names) and as its ``state_dict()`` (transformers >= 5 names)
   and loaded through ``MiTSegmenter(pretrained=...)``: the four stage
   outputs must equal HF's hidden states (float64; HF's block and stage LayerNorms set to the
   official eps 1e-6 first, HF uses 1e-5 there), which checks the key / value merge of the
   converter on the real HF modules.
2. On a CUDA device: training-step time and peak memory of MiT-B5 + DAFormer head (256) at
   DAFormer's 512x512 crops, batch 2, AdamW with the segmenter's param groups, fp32 (TF32) and
   bf16-mixed; SegFormer head (768) bf16; the toy B0 (head 64, 64x128, batch 4).

    python scripts/check_mit_device.py
"""
from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from uda.models.mit import MiTSegmenter

B0 = dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 5, 8],
          sr_ratios=[8, 4, 2, 1], drop_path_rate=0.0, num_labels=1000)


def hf_parity() -> None:
    try:
        from transformers import SegformerConfig, SegformerForImageClassification, SegformerModel
    except ImportError as e:
        print(f"HF parity skipped: {e}")
        return
    from safetensors.torch import save_file
    for cls in (SegformerModel, SegformerForImageClassification):
        for how in ("state_dict", "save_pretrained"):
            hf_case(cls(SegformerConfig(**B0)).eval(), how, save_file)


def hf_case(hf, how: str, save_file) -> None:
    """Save ``hf`` by ``how`` (its ``state_dict()`` as safetensors: transformers >= 5 names;
    ``save_pretrained``: the hub's names), load it into MiT-B0, compare the stages."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.safetensors"
        if how == "save_pretrained":
            hf.save_pretrained(d)
        else:
            save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(path))
        ours = MiTSegmenter(19, "b0", "daformer", 64, pretrained=path).eval().double()
    hf = hf.double()
    for name, m in hf.named_modules():
        if isinstance(m, torch.nn.LayerNorm) and re.search(  # transformers < 5 | >= 5 names
                r"\.layer_norm_[12]$|encoder\.layer_norm\.\d+$|\.layernorm_(before|after)$|"
                r"stages\.\d+\.layer_norm$", name):
            m.eps = 1e-6
    rep = ours.load_report
    print(f"{type(hf).__name__} via {how}: {rep.format}; loaded {rep.loaded}, unused "
          f"{rep.unused}, left as initialised {rep.missing} (the decode head)")
    x = torch.randn(2, 3, 67, 101, dtype=torch.float64)
    with torch.no_grad():
        ref = getattr(hf, "segformer", hf)(x, output_hidden_states=True).hidden_states
        _, feats = ours(x, return_features=True)
    for i, (a, b) in enumerate(zip(ref, feats["stages"]), start=1):
        print(f"  stage {i} {tuple(b.shape)}: max |ours - HF| {(a - b).abs().max():.2e} "
              f"(max |HF| {a.abs().max():.2e})")


def step_time(variant: str, head: str, dim: int, batch: int, size: tuple[int, int],
              bf16: bool, iters: int = 15) -> None:
    torch.manual_seed(0)
    model = MiTSegmenter(19, variant, head, dim).cuda().train()
    opt = torch.optim.AdamW(model.param_groups(6e-5), lr=6e-5, weight_decay=0.01)
    x = torch.randn(batch, 3, *size, device="cuda")
    y = torch.randint(0, 19, (batch, *size), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    times = sorted(times[3:])
    print(f"mit_{variant} {head} {dim}, batch {batch} at {size[0]}x{size[1]}, "
          f"{'bf16-mixed' if bf16 else 'fp32 (TF32)'}: {times[len(times) // 2]:.4f} s/iter "
          f"(median of {len(times)}), peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


def main() -> None:
    hf_parity()
    if not torch.cuda.is_available():
        print("no CUDA device: step times skipped")
        return
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    for bf16 in (False, True):
        step_time("b5", "daformer", 256, 2, (512, 512), bf16)
    step_time("b5", "segformer", 768, 2, (512, 512), True)
    step_time("b0", "daformer", 64, 4, (64, 128), False)


if __name__ == "__main__":
    main()
