#!/usr/bin/env python
"""Cost of one DRANet training iteration: ours (uda) side by side with the official code.

Each implementation runs in its own fresh subprocess (so peak memory is its own); the parent
asks them for ONE iteration at a time, interleaved (ours, official, ours, ...), same shapes
(HxW, batch B source + B target), random init, random inputs. Ours: the DRANet module of
--ours-config under a bare Lightning Trainer (scripts/bench_methods.py), random weights
(model.pretrained=null, a file of random VGG19 weights), model.freeze_bn=false. Official:
its own Trainer.train_dis, train_esg x2, train_task (one iteration of its trainer.py) on
images in [-1, 1] and labels in [0, 19), imported from --official with runtime patches only
(on CPU .cuda() is a no-op; its data modules, tensorboardX, prettytable and the `stty` call
at import are stubbed; VGG19 and DRN-C-26 are built with random weights, nothing downloaded).
Its PatchGAN sees 2x4 patches of the frame: frames must be at least 64x128.

Per implementation: peak memory (CPU: ru_maxrss; CUDA: max_memory_allocated), memory once
networks and optimizers are built (CPU: VmRSS), after which the peak is reset so that
construction transients do not count; their difference is the training-step working set.
Median s/iter after --warmup; GFLOPs of one more iteration under FlopCounterMode
(convolutions and matmuls, forward and backward).

    python scripts/bench_dranet_official.py --official /tmp/dranet_official --size 256x512 \\
        --batch 2 --iters 3 --warmup 1 [--ours-config configs/gta5_cityscapes/dranet.yaml] \\
        [--device cuda] [--json out.json] [config overrides for ours ...]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
ROLES = ("segmenter", "translator", "discriminators", "perceptual")


# --- inside a worker ---------------------------------------------------------------------------
class Channel:
    """JSON lines to the parent on the real stdout; everything else printed goes to stderr."""

    def __init__(self):
        self.out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)

    def send(self, **kw):
        self.out.write(json.dumps(kw) + "\n")

    def recv(self) -> str:
        line = sys.stdin.readline()
        if not line:  # the parent is gone
            os._exit(1)
        return line.strip()


def peak_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def built_mib(device: str) -> float:
    """Memory now; then the peak restarts from here (construction transients, e.g. the
    official VGG19 building and dropping its 548 MB classifier, are no training peak)."""
    if device == "cuda":
        now = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        return now
    with open("/proc/self/status") as f:
        now = next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) / 1024
    with contextlib.suppress(OSError):  # Linux >= 4.0: resets VmHWM, which ru_maxrss reads
        Path("/proc/self/clear_refs").write_text("5")
    return now


def params_m(*modules) -> float:
    return sum(p.numel() for m in modules for p in m.parameters()) / 1e6


def ours_worker(a, chan: Channel, scratch: str):
    sys.path.insert(0, str(REPO / "scripts"))
    import bench_methods as bm
    from uda import build

    cfg = bm.bench_config(Path(a.ours_config), [
        "model.pretrained=null", "model.freeze_bn=false", f"data.batch_size={a.batch}",
        f"method.dranet.perceptual_weights={bm.random_vgg19_weights(scratch)}",
        f"trainer.max_steps={a.iters + 1}", *a.overrides])
    if cfg.method.name != "dranet":
        raise SystemExit(f"{a.ours_config}: method.name is {cfg.method.name}, not dranet")
    module = build.build_module(cfg)
    bm.random_layout_means(module)  # no dataset here

    class Stepper(bm.IterTimer):  # one iteration per command from the parent
        def on_train_start(self, trainer, m):
            chan.send(built_mib=built_mib(a.device),
                      params_m={r: params_m(getattr(m, r)) for r in ROLES})

        def on_train_batch_start(self, trainer, m, batch, batch_idx):
            self.flops = FlopCounterMode(display=False) if chan.recv() == "flops" else None
            self.step0 = trainer.global_step
            if self.flops:
                self.flops.__enter__()
            super().on_train_batch_start(trainer, m, batch, batch_idx)

        def on_train_batch_end(self, trainer, m, outputs, batch, batch_idx):
            super().on_train_batch_end(trainer, m, outputs, batch, batch_idx)
            if self.flops:
                self.flops.__exit__(None, None, None)
            chan.send(s=self.times[-1], peak_mib=peak_mib(a.device),
                      flops=self.flops.get_total_flops() if self.flops else None,
                      optimizer_steps=trainer.global_step - self.step0)

    trainer = bm.bench_trainer(module, a.iters + 1, "gpu" if a.device == "cuda" else "cpu",
                               cfg.trainer.precision, [Stepper()])
    trainer.fit(module, datamodule=bm.random_datamodule(a.hw, a.batch))


class Nothing:  # stands for SummaryWriter and PrettyTable: accepts anything, does nothing
    def __init__(self, *args, **kw):
        pass

    def __getattr__(self, name):
        return lambda *args, **kw: None


class NoWeights(dict):  # what drn26 "downloads": it deletes the fc entries, then loads nothing
    def __delitem__(self, key):
        pass


def official_worker(a, chan: Channel, scratch: str):
    from unittest import mock

    import torchvision.models

    sys.path.insert(0, a.official)
    os.chdir(scratch)  # it writes ./checkpoint, ./pretrained
    if a.device == "cpu":
        torch.nn.Module.cuda = lambda self, *args, **kw: self
        torch.Tensor.cuda = lambda self, *args, **kw: self
    vgg19 = torchvision.models.vgg19
    torchvision.models.vgg19 = lambda *args, pretrained=False, **kw: vgg19(weights=None, **kw)
    torch.utils.model_zoo.load_url = lambda *args, **kw: NoWeights()
    stubs = {"tensorboardX": {"SummaryWriter": Nothing}, "prettytable": {"PrettyTable": Nothing},
             "dataset": {"get_dataset": lambda *args, **kw: (None, None)},
             "dataloader": {}, "dataloader.Cityscapes": {"decode_labels": Nothing}}
    for name, attrs in stubs.items():
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name].__dict__.update(attrs)
    h, w = a.hw
    argv = ["train.py", "-T", "seg", "-D", "G", "C", "--batch", str(a.batch), "--imsize", str(h),
            "--ex", "bench"]
    # utils.py reads the terminal width with `stty size` at import
    with mock.patch("os.popen", lambda *args, **kw: io.StringIO("24 80")), \
            mock.patch("sys.argv", argv):
        import args as official_args
        import trainer as official_trainer
        opts = official_args.get_args()  # its defaults: lr, CADT on for seg, ...
    tr = official_trainer.Trainer(opts)
    tr.imsize = (w, h)  # (width, height): the Separator's per-pixel weights; default (2h, h)
    tr.set_default()
    tr.set_networks()
    tr.set_optimizers()
    tr.set_train()
    n = tr.nets
    chan.send(built_mib=built_mib(a.device), params_m=dict(zip(ROLES, (
        params_m(*n["T"].values()), params_m(n["E"], n["S"], n["G"]),
        params_m(*n["D"].values()), params_m(n["P"])))))
    dev = "cuda" if a.device == "cuda" else "cpu"
    while (cmd := chan.recv()) in ("step", "flops"):
        imgs = {d: torch.rand(a.batch, 3, h, w, device=dev) * 2 - 1 for d in opts.datasets}
        labels = {d: torch.randint(0, 19, (a.batch, h, w), device=dev) for d in opts.datasets}
        counter = FlopCounterMode(display=False) if cmd == "flops" else contextlib.nullcontext()
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with counter:  # one iteration of its Trainer.train()
            tr.train_dis(imgs)
            for _ in range(2):
                tr.train_esg(imgs)
            tr.train_task(imgs, labels)
        if dev == "cuda":
            torch.cuda.synchronize()
        chan.send(s=time.perf_counter() - t0, peak_mib=peak_mib(a.device),
                  flops=counter.get_total_flops() if cmd == "flops" else None)
        if cmd == "flops":  # the last one
            return


# --- the parent --------------------------------------------------------------------------------
class Worker:
    def __init__(self, name: str, argv: list[str], threads: int):
        self.name, self.log = name, tempfile.TemporaryFile("w+")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.p = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv,
                                   "--worker", name], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)

    def recv(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            self.log.seek(0)
            raise RuntimeError(f"{self.name} worker exited ({self.p.wait()}):\n"
                               f"{self.log.read()[-4000:]}")
        return json.loads(line)

    def ask(self, cmd: str) -> dict:
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        return self.recv()

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def official_problem(path: str | None) -> str | None:
    if not path:
        return "no --official checkout given"
    if not ((Path(path) / "trainer.py").is_file() and (Path(path) / "models").is_dir()):
        return f"{path} has no trainer.py and models/"
    return None


def run(a, argv: list[str]) -> dict:
    """The workers, one iteration each in turn; {name: figures}."""
    names = ["ours"] + ([] if official_problem(a.official) else ["official"])
    workers = {n: Worker(n, argv, a.threads) for n in names}
    try:
        built = {n: w.recv() for n, w in workers.items()}
        steps = {n: [] for n in names}
        for _ in range(a.iters):
            for n, w in workers.items():
                steps[n].append(w.ask("step"))
        flops = {n: w.ask("flops")["flops"] for n, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    if any(r["optimizer_steps"] != 3 for r in steps["ours"]):
        raise RuntimeError(f"ours: an iteration skipped an optimizer step: {steps['ours']}")
    out = {}
    for n in names:
        times, peak = [r["s"] for r in steps[n]], steps[n][-1]["peak_mib"]
        out[n] = {"peak_mib": peak, "built_mib": built[n]["built_mib"],
                  "working_set_mib": peak - built[n]["built_mib"],
                  "s_per_iter": statistics.median(times[a.warmup:] or times), "times": times,
                  "gflops_per_iter": flops[n] / 1e9, "params_m": built[n]["params_m"]}
    return out


def report(a, res: dict) -> tuple[str, dict]:
    mem = "CUDA" if a.device == "cuda" else "RSS"
    rows = [(f"peak {mem} MiB", "peak_mib", ".0f"), (f"{mem} after build MiB", "built_mib", ".0f"),
            ("working set MiB", "working_set_mib", ".0f"), ("s/iter", "s_per_iter", ".3f"),
            ("GFLOPs/iter", "gflops_per_iter", ".1f")]
    ours, off = res["ours"], res.get("official")
    ratio = {k: ours[k] / off[k] if off and off[k] else None for _, k, _ in rows}
    lines = ["| | ours | official | ours/official |", "|---|---:|---:|---:|"]
    for label, k, fmt in rows:
        lines.append(f"| {label} | {ours[k]:{fmt}} | {format(off[k], fmt) if off else '-'} | "
                     f"{'-' if ratio[k] is None else format(ratio[k], '.2f')} |")
    params = "; ".join(f"{n} " + " / ".join(f"{res[n]['params_m'][r]:.2f}" for r in ROLES)
                       for n in res)
    device = torch.cuda.get_device_name() if a.device == "cuda" else cpu_name()
    h, w = a.hw
    lines += [f"\nparams M ({' / '.join(ROLES)}): {params}",
              f"{h}x{w}, batch {a.batch} source + {a.batch} target; {a.threads} thread(s); "
              f"torch {torch.__version__}; {device}; median of {len(ours['times'][a.warmup:])} "
              f"iters after {a.warmup} warmup; ours at commit {a.commit}"]
    return "\n".join(lines), {"shape": [h, w], "batch": a.batch, "threads": a.threads,
                              "torch": torch.__version__, "device": device, "commit": a.commit,
                              **res, "ratio": ratio}


def commit() -> str:
    """HEAD, and whether uda/ or configs/ differ from it (ours runs the working tree)."""
    git = lambda *cmd: subprocess.run(["git", "-C", str(REPO), *cmd],  # noqa: E731
                                      capture_output=True, text=True).stdout.strip()
    dirty = git("status", "--porcelain", "uda", "configs")
    return (git("rev-parse", "--short", "HEAD") or "?") + (
        " + uncommitted changes in uda/ configs/" if dirty else "")


def cpu_name() -> str:
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
        return "CPU " + next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    return "CPU"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--official", default=None, help="checkout of Seung-Hun-Lee/DRANet")
    p.add_argument("--ours-config", default=str(REPO / "configs/gta5_cityscapes/dranet.yaml"))
    p.add_argument("--size", default="256x512", help="HxW")
    p.add_argument("--batch", type=int, default=2, help="per domain")
    p.add_argument("--iters", type=int, default=3, help="timed iterations, warmup included")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--worker", choices=["ours", "official"], help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="config overrides for ours (key=value)")
    a = p.parse_intermixed_args(argv)
    a.hw = tuple(int(v) for v in a.size.split("x"))
    if a.worker:
        torch.set_num_threads(a.threads)
        torch.manual_seed(0)
        chan = Channel()
        with tempfile.TemporaryDirectory() as scratch:
            (ours_worker if a.worker == "ours" else official_worker)(a, chan, scratch)
        return 0
    if (why := official_problem(a.official)):
        print(f"official side skipped: {why}; measuring ours only", flush=True)
    wargv = [*argv, "--ours-config", str(Path(a.ours_config).resolve()),  # workers chdir
             *(["--official", str(Path(a.official).resolve())] if a.official else [])]
    a.commit = commit()  # now: the workers import the tree as it is now
    table, figures = report(a, run(a, wargv))
    print(table)
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
