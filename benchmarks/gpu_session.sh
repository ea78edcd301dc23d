#!/usr/bin/env bash
# The GPU checks of issue 30, prepared for one call of the device tool (../shared/device/README.md:
# `bash ../shared/device/prepare.sh .venv` here first, then run with carry [".device"]):
#   . .device/setup.sh && bash benchmarks/gpu_session.sh tests bench     # ~6 minutes
#   . .device/setup.sh && bash benchmarks/gpu_session.sh search          # the 10-minute bsd68_gpu.yaml search
# Every part is time-boxed and writes into $OUT as it finishes (a run cut short still returns what it had).
set -u
OUT="${OUT:-benchmarks/out/gpu_session}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
for part in "$@"; do
  case "$part" in
    tests)   # the GPU test file: train_seconds synced, crops on the device with no host sync, packing
      timeout 240 python3 -m pytest -q tests/test_gpu.py -k "not serve" > "$OUT/tests.log" 2>&1 ;;
    bench)   # one width-64 trial's time, the sampler against a step, 1-8 packed width-64 then width-16 trials
      timeout 200 python3 benchmarks/bench_gpu.py --parts share sampler packing --width 64 --batch 64 \
        --seconds 30 --pack-seconds 20 --packs 1 2 4 > "$OUT/bench_w64.log" 2>&1
      cp benchmarks/out/gpu/cuda.json "$OUT/bench_w64.json" 2>/dev/null
      timeout 200 python3 benchmarks/bench_gpu.py --parts packing --width 16 --batch 64 \
        --pack-seconds 20 --packs 1 8 > "$OUT/bench_w16.log" 2>&1
      cp benchmarks/out/gpu/cuda.json "$OUT/bench_w16.json" 2>/dev/null ;;
    search)  # BSD68 >= 29.23 dB in 10 minutes (the goal); the report skipped, the model's metrics kept
      timeout 590 tuner tune search_spaces/bsd68_gpu.yaml --storage /tmp/runs --no-report > "$OUT/search.log" 2>&1
      cp /tmp/runs/bsd68_gpu/best/metrics.json "$OUT/search_metrics.json" 2>/dev/null ;;
    *) echo "unknown part $part (tests, bench, search)"; exit 2 ;;
  esac
done
