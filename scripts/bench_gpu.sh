#!/usr/bin/env bash
# One prepared GPU check, run once from the repository root on a CUDA machine:
#     OUT=<empty folder> bash scripts/bench_gpu.sh
# The packages missing there come as wheels in .whl/ (carry it): see "setup" below.
#
# Parts: each has its own timeout, and one that fails does not stop the others. Elapsed seconds
# are printed per part. A part that would end past BENCH_GPU_BUDGET seconds (default 400) gets
# less time, or is skipped.
#   setup  pip-installs .whl/*.whl into /tmp/site (PYTHONPATH=/tmp/site:$PWD) and prints the
#          device and versions. Starts in the background: part 3's synthetic frames and a random
#          VGG19 weights file.
#   1      pytest -m gpu tests/ (the CUDA-only tests, tests/test_gpu.py).
#   2      scripts/bench_methods.py, one process per precision: source_only, adversarial and
#          dranet at 512x1024 batch 2+2, and configs/gta5_cityscapes/*_official.yaml at their own
#          frames (AdaptSegNet/ADVENT: whole frames 720x1280 + 512x1024, batch 1+1; DACS: 512x512
#          crops, 2+2). Random weights, 5 iterations (median of the last 3), in 32-true and
#          bf16-mixed, plus 16-mixed for the GAN recipes (adversarial, dranet). Reported per item:
#          s/iter, images/s (source + target), peak CUDA memory, finite losses, and the final
#          GradScaler scale. An item that errors (CUDA out of memory included) is recorded.
#          If a process dies, the item it was running is recorded and the rest rerun.
#   3      a 200-iteration DRANet run: configs/gta5_cityscapes/dranet.yaml, bf16-mixed.
#          Data: synthetic frames in the real layouts: GTA5-like source 16 x 1914x1052,
#          Cityscapes-like target 16 train + 4 val x 2048x1024. Validated once, at the end, on
#          the 4 val images (predicted at 1024x512, scored at 2048x1024: the config's protocol).
#          VGG19 has random weights (no weights file there; same cost), 8 loader workers. Reports
#          the final mIoU line, s/iter, and whether every logged loss was finite. If part 2's
#          DRANet bf16 figure says 200 iterations will not fit in the time left, DRANet runs 50
#          iterations and source_only 200 instead (the summary says so).
#   summary  printed last; the same text is in $OUT/summary.txt. $OUT also gets setup_tests.log,
#          bench.log, bench.jsonl, bench.csv, train.log and train_metrics.csv (at most 8 files).
# Expected wall time on one H200 (estimates: no GPU has run it yet): setup 15 s, part 1 50 s,
# part 2 150 s (32-true 60 s, bf16-mixed 55 s, 16-mixed 35 s; at most 130 + 120 + 60 s),
# part 3 100 s (200 DRANet iterations at ~0.25 s, start-up, validation, checkpoints): ~320 s.
#
# BENCH_GPU_PARTS="1 2 3" (default): the parts to run, e.g. "3" alone.
# BENCH_GPU_DRYRUN=1: the same plumbing on the CPU: tiny frames (32x64 crops, batch 1), 2
# iterations, 16-mixed through an explicit CPU GradScaler, 5 training iterations on tiny frames,
# no wheel install; e.g.  BENCH_GPU_DRYRUN=1 PYTHON=.venv/bin/python bash scripts/bench_gpu.sh
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
T0=$SECONDS
PY=${PYTHON:-python3}
DRY=${BENCH_GPU_DRYRUN:-0}
PARTS=" ${BENCH_GPU_PARTS:-1 2 3} "
OUT=${OUT:-$(mktemp -d /tmp/bench_gpu_out.XXXXXX)}
mkdir -p "$OUT" || exit 1
if [ -e "$OUT/summary.txt" ] || [ -e "$OUT/bench.jsonl" ]; then
    echo "bench_gpu: error: $OUT already holds results (summary.txt, bench.jsonl): set OUT to an empty folder" >&2
    exit 2
fi
WORK=$(mktemp -d /tmp/bench_gpu_work.XXXXXX) || exit 1
SUMMARY=$OUT/summary.txt
LOG=$OUT/setup_tests.log
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=disabled WANDB_SILENT=true

# self-training at its real config, and on the two new backbones (MiT-B5 + DAFormer head,
# DINOv2 ViT-L + pyramid head): YAMLs written here, extending the real self_training config
for spec in "mit_b5:{name: mit, variant: b5, head: daformer, head_dim: 256}" \
            "dinov2_l:{name: dinov2, vit_variant: l}"; do
    printf 'defaults: [%s]\nmodel: %s\n' "$PWD/configs/gta5_cityscapes/self_training.yaml" \
        "${spec#*:}" > "$WORK/self_training_${spec%%:*}.yaml"
done
ITEMS=(source_only adversarial dranet self_training "$WORK/self_training_mit_b5.yaml"
       "$WORK/self_training_dinov2_l.yaml" configs/gta5_cityscapes/adaptsegnet_official.yaml
       configs/gta5_cityscapes/advent_official.yaml configs/gta5_cityscapes/dacs_official.yaml
       configs/gta5_cityscapes/{daformer,hrda,mic,mic_hrda,vfm}.yaml)
GAN_ITEMS=(adversarial dranet)
# BENCH_GPU_ITEMS="a b.yaml ...": part 2 benchmarks these instead (GAN items among them also
# in 16-mixed); BENCH_GPU_PRECISIONS (default "32-true bf16-mixed 16-mixed"): part 2's precisions
if [ -n "${BENCH_GPU_ITEMS:-}" ]; then
    read -ra ITEMS <<< "$BENCH_GPU_ITEMS"
    GAN_ITEMS=($(printf '%s\n' "${ITEMS[@]}" | grep -xE 'adversarial|dranet'))
fi
PRECISIONS=" ${BENCH_GPU_PRECISIONS:-32-true bf16-mixed 16-mixed} "
if [ "$DRY" = 1 ]; then
    BUDGET=${BENCH_GPU_BUDGET:-3600}; ACC=cpu
    BENCH_ARGS=(--crop 32x64 --batch 1 --iters 2 --warmup 1)
    GROUP_S=(900 900 900)                        # 32-true, bf16-mixed, 16-mixed
    SRC_SIZE=66x120; TGT_SIZE=64x128; NSRC=4; NTGT=4; NVAL=2
    ITERS=5; FALLBACK_ITERS=3
    TRAIN_EXTRA=(trainer.accelerator=cpu data.num_workers=0 data.persistent_workers=false
                 "data.source_transform.resize=[66,120]" "data.source_transform.crop=[32,64]"
                 "data.target_transform.resize=[64,128]" "data.target_transform.crop=[32,64]"
                 "data.eval_transform.resize=[64,128]" eval.translation_images=2)
else
    BUDGET=${BENCH_GPU_BUDGET:-480}; ACC=gpu
    BENCH_ARGS=(--iters 5 --warmup 2)
    GROUP_S=(170 160 60)
    SRC_SIZE=1052x1914; TGT_SIZE=1024x2048; NSRC=16; NTGT=16; NVAL=4
    ITERS=200; FALLBACK_ITERS=50
    TRAIN_EXTRA=(trainer.accelerator=gpu data.num_workers=8)
fi

say() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET - (SECONDS - T0))); }
# part_timeout MAX MIN: the seconds a part may run (MAX, or less to end within the budget);
# fails when fewer than MIN are left
part_timeout() {
    local l=$(( $(left) - 5 ))
    (( l >= $2 )) || return 1
    echo $(( l < $1 ? l : $1 ))
}
begin() { PART=$1; PART_T=$SECONDS; echo "=== part $1 (at $((SECONDS - T0)) s) ==="; }
end() { say "part $PART: $* [$((SECONDS - PART_T)) s; total $((SECONDS - T0)) s]"; }
csv_list() { local IFS=,; echo "$*"; }
wanted() { [[ $PARTS == *" $1 "* ]]; }

# ---------------------------------------------------------------- setup
begin setup
SITE=""
if [ "$DRY" != 1 ] && compgen -G ".whl/*.whl" > /dev/null; then
    SITE=/tmp/site
    timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$SITE" .whl/*.whl >> "$LOG" 2>&1
    rc=$?
    say "setup: pip install of $(ls .whl/*.whl | wc -l) wheels from .whl/ into $SITE: exit $rc"
fi
export PYTHONPATH=${SITE:+$SITE:}$PWD${PYTHONPATH:+:$PYTHONPATH}
command -v nvidia-smi > /dev/null && nvidia-smi -L >> "$LOG" 2>&1
timeout 120 "$PY" - >> "$LOG" 2>&1 <<'EOF'
import platform, torch, pytorch_lightning as pl
dev = (f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
       if torch.cuda.is_available() else "no CUDA device")
print(f"device: {dev}; python {platform.python_version()}, torch {torch.__version__} "
      f"(CUDA {torch.version.cuda}), lightning {pl.__version__}; TF32 in 32-true: convolutions "
      f"{torch.backends.cudnn.allow_tf32}, matmul {torch.backends.cuda.matmul.allow_tf32}")
import albumentations, omegaconf, cityscapesscripts.helpers.labels  # noqa: F401,E401
import uda.cli, datamodules.transforms, uda.build  # noqa: F401,E401
print(f"imports ok: albumentations {albumentations.__version__}, omegaconf {omegaconf.__version__}")
EOF
rc=$?
say "setup: $(grep -h '^device:' "$LOG" | tail -1)"
end "imports $([ $rc = 0 ] && echo ok || echo "FAILED (exit $rc): see setup_tests.log")"

# in the background while parts 1-2 run: part 3's frames and a random VGG19 weights file
toy() {  # OUT SIZE SOURCE TARGET VAL
    timeout 400 "$PY" -m uda data make-toy --out "$1" --size "$2" --num-source "$3" \
        --num-target "$4" --num-val "$5" > "$1.log" 2>&1
    echo $? > "$1.rc"
}
PIDS=()
if wanted 3; then
    toy "$WORK/src" "$SRC_SIZE" "$NSRC" 0 0 &
    PIDS+=($!)
    toy "$WORK/tgt" "$TGT_SIZE" 0 "$NTGT" "$NVAL" &
    PIDS+=($!)
    (timeout 300 "$PY" -c "import sys, torch, torchvision
torch.save(torchvision.models.vgg19(weights=None).features.state_dict(), sys.argv[1])" \
        "$WORK/vgg19.pth" > "$WORK/vgg19.log" 2>&1) &
    PIDS+=($!)
fi

# ---------------------------------------------------------------- 1: CUDA-only tests
begin 1
if ! wanted 1; then
    end "not selected (BENCH_GPU_PARTS)"
elif t=$(part_timeout 150 30); then
    echo "--- pytest -m gpu tests/ (timeout $t s)" >> "$LOG"
    timeout -k 10 "$t" "$PY" -m pytest -q -m gpu tests/ -p no:cacheprovider \
        --continue-on-collection-errors >> "$LOG" 2>&1
    rc=$?
    last=$(grep -E "[0-9]+ (passed|failed|skipped|deselected|errors?)|no tests ran" "$LOG" | tail -1)
    case $rc in
        0) verdict="ok";; 5) verdict="no test selected";; 124) verdict="TIMED OUT";; *) verdict="FAILED";;
    esac
    end "pytest -m gpu: $verdict (exit $rc): $last"
else
    end "skipped (budget)"
fi

# ---------------------------------------------------------------- 2: benchmarks
# bench_group PRECISION MAX_SECONDS ITEM...: one bench_methods.py process for the items; if it
# dies, the item it was running gets a row saying so and the others run in a new process
bench_group() {
    local prec=$1 deadline=$((SECONDS + $2)) rc l i
    shift 2
    local todo=("$@") methods configs
    while (( ${#todo[@]} )); do
        l=$(( deadline - SECONDS )); (( $(left) - 5 < l )) && l=$(( $(left) - 5 ))
        if (( l < 20 )); then
            say "  $prec: skipped (budget): ${todo[*]}"
            for i in "${todo[@]}"; do
                "$PY" scripts/bench_gpu_report.py died "$OUT/bench.jsonl" "$prec" "$i" skipped
            done
            return
        fi
        methods=(); configs=()
        for i in "${todo[@]}"; do
            if [[ $i == *.yaml ]]; then configs+=("$i"); else methods+=("$i"); fi
        done
        todo=("${methods[@]}" "${configs[@]}")  # the order bench_methods.py runs them in
        echo "--- $prec: ${todo[*]} (timeout $l s, at $((SECONDS - T0)) s)" >> "$OUT/bench.log"
        timeout -k 10 "$l" "$PY" scripts/bench_methods.py --size real --accelerator "$ACC" \
            --precision "$prec" "${BENCH_ARGS[@]}" --keep-going --jsonl "$OUT/bench.jsonl" \
            --methods "$(csv_list "${methods[@]}")" --configs "$(csv_list "${configs[@]}")" \
            >> "$OUT/bench.log" 2>&1
        rc=$?
        mapfile -t todo < <("$PY" scripts/bench_gpu_report.py missing "$OUT/bench.jsonl" "$prec" "${todo[@]}")
        if (( ${#todo[@]} )); then
            "$PY" scripts/bench_gpu_report.py died "$OUT/bench.jsonl" "$prec" "${todo[0]}" "$rc"
            todo=("${todo[@]:1}")
        fi
    done
}
begin 2
if ! wanted 2; then
    end "not selected (BENCH_GPU_PARTS)"
elif part_timeout 60 60 > /dev/null; then
    say "part 2: scripts/bench_methods.py --size real --accelerator $ACC ${BENCH_ARGS[*]}; peak: $([ "$ACC" = gpu ] && echo 'CUDA max_memory_allocated' || echo 'process max RSS')"
    [[ $PRECISIONS == *" 32-true "* ]] && bench_group 32-true "${GROUP_S[0]}" "${ITEMS[@]}"
    [[ $PRECISIONS == *" bf16-mixed "* ]] && bench_group bf16-mixed "${GROUP_S[1]}" "${ITEMS[@]}"
    [[ $PRECISIONS == *" 16-mixed "* ]] && (( ${#GAN_ITEMS[@]} )) &&
        bench_group 16-mixed "${GROUP_S[2]}" "${GAN_ITEMS[@]}"
    "$PY" scripts/bench_gpu_report.py table "$OUT/bench.jsonl" "$OUT/bench.csv" | tee -a "$SUMMARY"
    end "done"
else
    end "skipped (budget)"
fi

# ---------------------------------------------------------------- 3: training runs
# train_run NAME CONFIG ITERATIONS METRICS OVERRIDE...: uda train on the synthetic frames; its
# summary; its logs/metrics.csv copied to $OUT/METRICS
train_run() {
    local name=$1 config=$2 iters=$3 metrics=$4 t rc
    shift 4
    if ! t=$(part_timeout 400 60); then say "  $name: skipped (budget)"; return; fi
    local run="$WORK/run_$name"
    echo "--- $name: $iters iterations (timeout $t s, at $((SECONDS - T0)) s)" >> "$OUT/train.log"
    timeout -k 15 "$t" "$PY" -m uda train --config "$config" \
        data.source.root="$WORK/src/source" data.target.root="$WORK/tgt/target" \
        trainer.max_steps="$iters" trainer.val_every="$iters" trainer.precision=bf16-mixed \
        trainer.log_every=5 trainer.progress_bar=true logger.name=csv run.dir="$run" \
        model.pretrained=null "${TRAIN_EXTRA[@]}" "$@" > "$WORK/train_$name.log" 2>&1
    rc=$?
    cat "$WORK/train_$name.log" >> "$OUT/train.log"
    say "  $name ($iters iterations, bf16-mixed): exit $rc$([ $rc = 124 ] && echo ' (TIMED OUT)')"
    "$PY" scripts/bench_gpu_report.py train "$WORK/train_$name.log" "$run/logs/metrics.csv" \
        "$iters" | sed 's/^/    /' | tee -a "$SUMMARY"
    [ -f "$run/logs/metrics.csv" ] && cp "$run/logs/metrics.csv" "$OUT/$metrics"
}
begin 3
(( ${#PIDS[@]} )) && wait "${PIDS[@]}"
toy_rc="$(cat "$WORK/src.rc" 2>/dev/null || echo none) $(cat "$WORK/tgt.rc" 2>/dev/null || echo none)"
if ! wanted 3; then
    end "not selected (BENCH_GPU_PARTS)"
elif [ "$toy_rc" != "0 0" ] || [ ! -s "$WORK/vgg19.pth" ]; then
    cat "$WORK"/src.log "$WORK"/tgt.log "$WORK"/vgg19.log >> "$OUT/train.log" 2>/dev/null
    end "SKIPPED: synthetic frames (make-toy exit codes: $toy_rc) or VGG19 file missing: see train.log"
else
    say "part 3: synthetic frames: source $NSRC x $SRC_SIZE (GTA5 layout), target $NTGT + $NVAL val x $TGT_SIZE (Cityscapes layout); VGG19 random weights"
    VGG=method.dranet.perceptual_weights="$WORK/vgg19.pth"
    est=$("$PY" scripts/bench_gpu_report.py s-per-iter "$OUT/bench.jsonl" dranet bf16-mixed)
    # 512x512 training crops: about 0.6 x the 512x1024 figure; 60 s of start-up and validation
    need=$(awk -v s="${est:-0.5}" -v n="$ITERS" 'BEGIN { printf "%d", n * s * 0.6 + 60 }')
    if (( need <= $(left) - 10 )); then
        say "  plan: DRANet $ITERS iterations (estimated $need s from part 2's ${est:-unknown (0.5 assumed)} s/iter; $(left) s left)"
        train_run dranet configs/gta5_cityscapes/dranet.yaml "$ITERS" train_metrics.csv "$VGG"
    else
        say "  plan: DRANet $FALLBACK_ITERS + source_only $ITERS iterations: DRANet $ITERS would take ~$need s, $(left) s left"
        train_run dranet configs/gta5_cityscapes/dranet.yaml "$FALLBACK_ITERS" train_metrics.csv "$VGG"
        train_run source_only configs/gta5_cityscapes/source_only.yaml "$ITERS" \
            train_metrics_source_only.csv model.freeze_bn=false
    fi
    end "done"
fi

# ---------------------------------------------------------------- summary
for f in "$OUT"/*.log; do  # the copy back takes files under 16 MiB
    [ "$(stat -c %s "$f")" -gt 15000000 ] && { tail -c 15000000 "$f" > "$f.tmp" && mv "$f.tmp" "$f"; }
done
[ "${BENCH_GPU_KEEP:-0}" = 1 ] || rm -rf "$WORK"  # frames, runs, checkpoints (BENCH_GPU_KEEP=1 keeps them)
say "total $((SECONDS - T0)) s (budget $BUDGET s); files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
echo
echo "================ bench_gpu summary ================"
cat "$SUMMARY"
