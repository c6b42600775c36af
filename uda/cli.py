"""Command line: `uda <command> --help`.

Heavy imports (numpy, torch, Lightning, uda.build/train) happen inside each command, after the
arguments are parsed: `uda --help` and usage errors import none of them. Usage and
configuration errors print one `uda: error: ...` line and exit 2 (argparse's convention).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from uda.console import quiet_library_noise
from uda.methods import NAMES


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the option in its error)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def probability(text: str) -> float:
    """argparse type: a float in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def image_size(text: str) -> tuple[int, int]:
    """argparse type: HEIGHTxWIDTH, both integers >= 16 (the toy generator's minimum)."""
    parts = text.lower().split("x")
    try:
        h, w = (int(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH (e.g. 128x256), got {text!r}") \
            from None
    if min(h, w) < 16:
        raise argparse.ArgumentTypeError(f"height and width must be >= 16, got {text!r}")
    return h, w


def _check_outputs(files=(), folders=()) -> None:
    """Fail before any work when an output path cannot be written: `files` and `folders` are
    (option, path) pairs; a None path is skipped."""
    from uda.output_paths import check_output_dir, check_output_file
    for option, path in files:
        if path is not None:
            check_output_file(path, option, f"give a writable {option} path")
    for option, path in folders:
        if path is not None:
            check_output_dir(path, option, f"give a writable {option} folder")


def _cmd_train(args) -> int:
    from uda.config import load_config
    cfg = load_config(args.config, args.overrides)  # before Lightning: config errors are quick
    if cfg.run.dir:
        from uda.output_paths import check_run_dir
        check_run_dir(cfg.run.dir)
    from uda.train import EXIT_INTERRUPTED, train
    result = train(cfg, resume=args.resume, print_config=args.print_config)
    return EXIT_INTERRUPTED if result.get("interrupted") else 0


def _check_cue(args) -> None:
    """`--cue-conflicting` (make-toy, benchmark toy) only means something with `--spurious-cue`."""
    if args.cue_conflicting and not args.spurious_cue:
        from uda.config import ConfigError
        raise ConfigError(f"--cue-conflicting {args.cue_conflicting} needs --spurious-cue (the "
                          "bias-conflicting source images are those without the cue): add "
                          "--spurious-cue or drop --cue-conflicting")


def _cmd_make_toy(args) -> int:
    from datamodules.toy import make_toy
    from uda.config import ConfigError
    _check_cue(args)
    _check_outputs(folders=[("--out", args.out)])
    h, w = args.size
    try:
        summary = make_toy(args.out, seed=args.seed, num_source=args.num_source,
                           num_target_train=args.num_target, num_target_val=args.num_val,
                           height=h, width=w, spurious_cue=args.spurious_cue,
                           cue_conflicting=args.cue_conflicting, progress=True, shift=args.shift)
    except ValueError as e:  # make_toy's argument checks: reported as a usage error
        raise ConfigError(str(e)) from e
    counts = ", ".join(f"{n} {split.replace('_', ' ')}" for split, n in summary["counts"].items())
    shift = "" if args.shift is None else f"; target appearance: shift {args.shift}"
    print(f"uda: toy benchmark written to {args.out} ({counts} images{shift})")
    return 0


def _cmd_check(args) -> int:
    from datamodules.check import check_dataset, format_report
    from datamodules.atomic_write import write_json_atomic
    _check_outputs(files=[("--output", args.output)])
    if not Path(args.root).is_dir():
        from uda.config import ConfigError
        raise ConfigError(f"--root {args.root}: no such folder; give the {args.dataset} root "
                          "(the folder holding its official layout)")
    result = check_dataset(args.dataset, args.root, args.split, workers=args.workers)
    print(format_report(result))
    if args.output:
        write_json_atomic(args.output, result)
    usable = "usable" if not result["problems"] else \
        f"NOT usable ({len(result['problems'])} problem(s) above)"
    written = f"; statistics written to {args.output}" if args.output else ""
    print(f"uda: {args.dataset} {args.split} at {args.root}: {usable}, {result['num_images']} "
          f"images checked{written}")
    return 0 if not result["problems"] else 1


def _cmd_prepare(args) -> int:
    from datamodules.check import format_report
    from datamodules.prepare import default_workers, output_folder, prepare_dataset
    root = Path(args.root)
    if not root.is_dir():
        from uda.config import ConfigError
        raise ConfigError(f"--root {args.root}: no such folder; give the {args.dataset} root "
                          "(the folder holding its official layout)")
    folder = output_folder(root, args.out)
    _check_outputs(folders=[("--out", folder)])
    workers = args.workers or default_workers()
    try:
        summary = prepare_dataset(args.dataset, root, args.split, folder, args.resize or (),
                                  workers=workers, progress=True)
    except KeyboardInterrupt:
        print(f"uda: interrupted; what was finished is kept in {folder}: run the same command "
              "again to continue", file=sys.stderr)
        return 3
    result = summary["result"]
    print(format_report(result))
    sizes = "".join(f", {size_name} copies" for size_name in
                    sorted({f"{h}x{w}" for h, w in (args.resize or ())}))
    problems = f"; {len(result['problems'])} problem(s) above (those samples not prepared)" \
        if result["problems"] else ""
    print(f"uda: {args.dataset} {args.split} at {args.root}: {summary['prepared']} samples "
          f"prepared, {summary['skipped']} already done; trainIds maps{sizes} and class "
          f"statistics in {Path(folder) / args.split}{problems}")
    return 0 if not result["problems"] else 1


def _cmd_evaluate(args) -> int:
    _check_outputs(files=[("--output", args.output)], folders=[("--export", args.export)])
    from uda.evaluation.evaluate_checkpoint import evaluate
    evaluate(args.checkpoint, args.config, args.overrides, args.output, args.export)
    return 0


def _cmd_predict(args) -> int:
    _check_outputs(folders=[("--output", args.output)])
    from uda.evaluation.predict_files import predict
    written = predict(args.checkpoint, args.input, args.output, args.format, args.config,
                      args.overrides)
    print(f"uda: {len(written)} predictions ({args.format}) written to {args.output}")
    return 0


def _cmd_translate(args) -> int:
    from uda.config import ConfigError
    _check_outputs(files=[("--score-output", args.score_output)],
                   folders=[("--output", args.output)])
    if not args.score:
        given = [f for f, v in (("--reference", args.reference), ("--num-images", args.num_images),
                                ("--score-output", args.score_output)) if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)}: only with --score")
        if args.output is None:
            raise ConfigError("--output is required (optional only with --score)")
        from uda.translate import translate
        n = translate(args.checkpoint, args.input, args.output, args.num_styles, args.config,
                      args.overrides)
        print(f"uda: {n} source frames translated into the target style under {args.output}")
        return 0
    if args.reference is None:
        raise ConfigError("--score needs --reference CKPT (a segmentation checkpoint trained on "
                          "labelled target images, e.g. an oracle run's last.ckpt)")
    from uda.translation_quality import translate_and_score
    translate_and_score(args.checkpoint, args.input, args.reference, output=args.output,
                        num_styles=args.num_styles, num_images=args.num_images,
                        score_output=args.score_output, config_file=args.config,
                        overrides=args.overrides)
    return 0


def _cmd_benchmark_toy(args) -> int:
    _check_cue(args)
    from uda.benchmark import benchmark_toy
    from uda.config import ConfigError
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    shifts = None
    if args.shifts is not None:
        try:
            shifts = [int(k) for k in args.shifts.split(",") if k.strip()]
        except ValueError:
            raise ConfigError(f"--shifts: expected comma-separated integers >= 0 (e.g. 0,1,2), "
                              f"got {args.shifts!r}") from None
    data = [Path(args.data)] if shifts is None else [Path(args.data) / f"shift{k}" for k in shifts]
    generated = any(not (d / "toy_meta.json").is_file() for d in data)  # data written when absent
    _check_outputs(folders=[("--out", args.out), *([("--data", args.data)] if generated else [])])
    benchmark_toy(args.seeds, methods, args.data, args.out, args.overrides,
                  config_dir=args.config_dir, class_iou=args.class_iou,
                  spurious_cue=args.spurious_cue, cue_conflicting=args.cue_conflicting,
                  shifts=shifts)
    runs = len(methods) * args.seeds * (len(shifts) if shifts else 1)
    out = Path(args.out)
    print(f"uda: benchmark of {runs} run{'s' if runs != 1 else ''} written to "
          f"{out / 'benchmark.md'} and {out / 'benchmark.json'} (runs in {out})")
    return 0


def _cmd_evaluate_dir(args) -> int:
    from uda.evaluation import evaluate_pred_dir
    from datamodules.atomic_write import write_json_atomic
    from uda.metrics.results import format_table
    _check_outputs(files=[("--output", args.output)])
    results = evaluate_pred_dir(args.pred, args.gt_root, args.split, args.format,
                                num_workers=args.workers)
    print(format_table(results))
    if args.output:
        write_json_atomic(args.output, results)
    written = f"; results written to {args.output}" if args.output else ""
    print(f"uda: mIoU {results['mIoU']:.2f} of {results['num_images']} predictions in "
          f"{args.pred}{written}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="uda", description="Unsupervised domain adaptation for "
                                "semantic segmentation (GTA5/SYNTHIA -> Cityscapes).")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model", description="Train with a YAML config "
                       "(overriding the structured defaults) and key=value overrides.")
    t.add_argument("--config", required=True, help="YAML file, e.g. configs/toy/source_only.yaml")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=100")
    t.add_argument("--print-config", action="store_true", help="also print the whole resolved "
                   "config at the start (it is always saved as config.yaml in the run directory; "
                   "the start summary shows method, model, data, crop/batch, iterations, devices "
                   "and run directory)")
    t.add_argument("--resume", metavar="PATH|auto", help="continue from a checkpoint (model, "
                   "optimizers, schedulers, counters, RNG, data position); auto: run.dir's "
                   "last.ckpt if present, else start fresh. Without it, a run.dir that holds a "
                   "run is refused (runs are never overwritten)")
    t.set_defaults(func=_cmd_train)
    t.epilog = ("exit codes: 0 finished, 1 crashed, 2 configuration error, unwritable or refused "
                "run.dir / resume (nothing written), or a NaN/Inf loss or model state (no "
                "checkpoint written from it), 3 interrupted by SIGINT/SIGTERM/SIGUSR1 (last.ckpt "
                "written: continue with --resume auto)")

    ev = sub.add_parser("evaluate", help="evaluate a checkpoint on the target val split",
                        description="Run the evaluation protocol (eval.* keys: whole/slide, "
                        "flip, scales) of a checkpoint on target val; scores at label resolution.")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--config", help="YAML overriding the config stored in the checkpoint")
    ev.add_argument("overrides", nargs="*", help="key=value, e.g. data.target.root=/data/cs")
    ev.add_argument("--output", help="write results JSON here")
    ev.add_argument("--export", metavar="DIR", help="also write predictions: DIR/labelIds/"
                    "*_labelIds.png (official-evaluator ready) and DIR/color/*_color.png")
    ev.set_defaults(func=_cmd_evaluate)

    pr = sub.add_parser("predict", help="segment image files with a checkpoint",
                        description="Predict each image at its own resolution.")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--input", required=True, help="image file, folder or glob")
    pr.add_argument("--output", required=True, help="output folder")
    pr.add_argument("--format", default="color",
                    choices=["color", "overlay", "labelIds", "trainIds"])
    pr.add_argument("--config", help="YAML overriding the config stored in the checkpoint")
    pr.add_argument("overrides", nargs="*", help="key=value overrides")
    pr.set_defaults(func=_cmd_predict)

    tr = sub.add_parser("translate", help="render a source dataset in the target style "
                        "(DRANet checkpoint)", description="Write the source dataset translated "
                        "into the target style, same layout, original labels copied. --score: "
                        "measure the translation (FCN-score of a reference segmenter, style "
                        "Fréchet distances), with or without writing it.")
    tr.add_argument("--checkpoint", required=True, help="a DRANet run's checkpoint")
    tr.add_argument("--input", required=True, help="source dataset root (its official layout)")
    tr.add_argument("--output", help="output root (same layout); optional with --score")
    tr.add_argument("--num-styles", type=positive_int, default=16, help="target frames in the style bank")
    tr.add_argument("--score", action="store_true", help="score the translation: reference "
                    "mIoU on target val, untranslated and translated source (FCN-score); style "
                    "distances to target val and the gap closed")
    tr.add_argument("--reference", metavar="CKPT", help="with --score: reference segmentation "
                    "checkpoint trained on labelled target images (e.g. an oracle run's)")
    tr.add_argument("--num-images", type=positive_int, help="with --score: source frames scored, evenly "
                    "spaced over the split (default all)")
    tr.add_argument("--score-output", metavar="JSON", help="with --score: write the scores here")
    tr.add_argument("--config", help="YAML overriding the config stored in the checkpoint")
    tr.add_argument("overrides", nargs="*", help="key=value overrides")
    tr.set_defaults(func=_cmd_translate)

    e = sub.add_parser("evaluate-dir", help="score a folder of prediction PNGs against "
                       "Cityscapes ground truth", description="Evaluate prediction PNGs (matched "
                       "to ground truth by the <city>_<seq>_<frame> prefix, like the official "
                       "script) with the official Cityscapes semantics; missing, extra or "
                       "mis-sized predictions are listed in one error.")
    e.add_argument("--pred", required=True, help="folder of predictions (searched recursively)")
    e.add_argument("--gt-root", required=True, help="Cityscapes root containing gtFine/<split>/")
    e.add_argument("--split", default="val")
    e.add_argument("--format", default="labelIds", choices=["labelIds", "trainIds"],
                   help="pixel values of the predictions (default labelIds)")
    e.add_argument("--output", help="write the results JSON here")
    e.add_argument("--workers", type=positive_int, default=None,
                   help="decoding threads (default: the usable cores, at most 8)")
    e.set_defaults(func=_cmd_evaluate_dir)

    b = sub.add_parser("benchmark", help="method comparison benchmarks",
                       description="Method comparison benchmarks.")
    bsub = b.add_subparsers(dest="benchmark_command", required=True)
    bt = bsub.add_parser("toy", help="every method on the toy benchmark over seeds",
                         description="Train each method (configs/toy/<method>.yaml) for each "
                         "seed; print target mIoU mean +- std and wall time; write "
                         "OUT/benchmark.json and OUT/benchmark.md.")
    bt.add_argument("--seeds", type=positive_int, default=3, help="seeds 0..N-1 per method")
    bt.add_argument("--methods", default=",".join(NAMES),
                    help=f"comma-separated, from {', '.join(NAMES)} (default: all)")
    bt.add_argument("--data", default="data/toy", help="toy data (generated when absent)")
    bt.add_argument("--out", default="runs/benchmark_toy")
    bt.add_argument("--config-dir", default=str(Path(__file__).resolve().parents[1] / "configs" / "toy"),
                    help="where <method>.yaml live (e.g. configs/toy/cue for the spurious cue)")
    bt.add_argument("--class-iou", default=None, help="also report this class's IoU (e.g. car)")
    bt.add_argument("--spurious-cue", action="store_true",
                    help="generate the data (when absent) with the spurious cue")
    bt.add_argument("--cue-conflicting", type=probability, default=0.0,
                    help="with --spurious-cue: bias-conflicting source image probability")
    bt.add_argument("--shifts", default=None, metavar="K,K,...",
                    help="toy target appearances to compare (e.g. 0,1,2,3,4): data in DATA/shift<K> "
                         "(generated when absent), runs in OUT/shift<K>/<method>/seed<s>, one table "
                         "per shift plus a summary (mean mIoU, gap recovered between source_only "
                         "and oracle, shifts beating source-only)")
    bt.add_argument("overrides", nargs="*", help="key=value applied to every run")
    bt.set_defaults(func=_cmd_benchmark_toy)

    d = sub.add_parser("data", help="dataset tools", description="Dataset tools.")
    dsub = d.add_subparsers(dest="data_command", required=True)
    m = dsub.add_parser("make-toy", help="write the embedded toy benchmark",
                        description="Write synthetic street scenes: a source set in the GTA5 "
                        "layout and a target set (train, val) in the Cityscapes layout.")
    m.add_argument("--out", required=True, help="output directory")
    m.add_argument("--seed", type=non_negative_int, default=0)
    m.add_argument("--num-source", type=non_negative_int, default=400,
                   help="source (GTA5-layout) images")
    m.add_argument("--num-target", type=non_negative_int, default=400, help="target train images")
    m.add_argument("--num-val", type=non_negative_int, default=100, help="target val images")
    m.add_argument("--size", type=image_size, default=(128, 256),
                   help="HEIGHTxWIDTH, each >= 16 (default 128x256)")
    m.add_argument("--spurious-cue", action="store_true",
                   help="cars have one constant colour in the source only")
    m.add_argument("--cue-conflicting", type=probability, default=0.0,
                   help="with --spurious-cue: probability that a source image is bias-conflicting "
                        "(its cars keep random colours), e.g. 0.05 as in LfF's protocols")
    m.add_argument("--shift", type=non_negative_int, default=None, metavar="K",
                   help="target appearance K (>= 0) of a seeded family (hue anywhere on the circle, "
                        "saturation, cast, exposure, gamma, textures, blur, noise, lighting); "
                        "default: the documented appearance. Scenes, labels and source unchanged")
    m.set_defaults(func=_cmd_make_toy)

    c = dsub.add_parser("check", help="validate a dataset split and count class pixels",
                        description="Validate layout and every file (readable, sizes, label "
                        "values); print a per-class table; exit 1 when the split is unusable.")
    c.add_argument("--dataset", required=True, choices=["gta5", "cityscapes", "synthia"])
    c.add_argument("--root", required=True, help="dataset root in its official layout")
    c.add_argument("--split", required=True, help="e.g. train, val")
    c.add_argument("--output", help="write the statistics as JSON here")
    c.add_argument("--workers", type=positive_int, default=4, help="decoding threads")
    c.set_defaults(func=_cmd_check)

    pp = dsub.add_parser("prepare", help="write trainIds maps, resized copies and class "
                         "statistics of a split (faster loading, no change to the originals)",
                         description="Check every file of a split as `data check` does and "
                         "write into a separate folder its trainIds maps, copies resized to "
                         "training scales (--resize) and the class statistics of rare-class "
                         "sampling; training and evaluation then read them (same samples). "
                         "Resumable: a second run skips what is done. Exit 1 when files have "
                         "problems (those samples are not prepared), 3 when interrupted.")
    pp.add_argument("--dataset", required=True, choices=["gta5", "cityscapes", "synthia"])
    pp.add_argument("--root", required=True, help="dataset root in its official layout (only read)")
    pp.add_argument("--split", required=True, help="e.g. train, val")
    pp.add_argument("--out", help="prepared folder (default ROOT/.uda_prepared, found by "
                    "training; elsewhere, set data.source.prepared / data.target.prepared to it)")
    pp.add_argument("--resize", type=image_size, action="append", metavar="HEIGHTxWIDTH",
                    help="also write copies at this size: the config's data.*_transform.resize "
                    "(e.g. 720x1280 GTA5, 760x1280 SYNTHIA, 512x1024 Cityscapes); repeatable")
    pp.add_argument("--workers", type=positive_int, default=None,
                    help="processes (default: the usable cores, at most 8)")
    pp.set_defaults(func=_cmd_prepare)
    return p


def _reported_errors() -> tuple[type[BaseException], ...]:
    """The exceptions reported as one `uda: error:` line. Looked up only once one was raised:
    `NonFiniteError` lives in uda.nonfinite (torch), which only training loads, so it is taken
    from sys.modules instead of being imported."""
    from datamodules.image_io import DatasetError
    from uda.config import ConfigError
    nonfinite = sys.modules.get("uda.nonfinite")
    return (ConfigError, DatasetError) + ((nonfinite.NonFiniteError,) if nonfinite else ())


def _interruption():
    """(Interrupted, its exit code) once uda.train is loaded (only runs raise it), else None."""
    train = sys.modules.get("uda.train")
    return (train.Interrupted, train.EXIT_INTERRUPTED) if train else None


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    quiet_library_noise()
    try:
        return args.func(args)
    except Exception as e:
        stop = _interruption()
        if stop is not None and isinstance(e, stop[0]):
            print(f"uda: interrupted: {e}", file=sys.stderr)
            return stop[1]
        from uda.errors import user_message
        message = user_message(e, _reported_errors())
        if message is None:
            raise
        print(f"uda: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
