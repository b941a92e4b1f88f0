#!/usr/bin/env bash
# Every GPU check that BENCHMARKS.md asks for, in one pass of about 9 minutes:
#   bash launch/gpu_checks.sh                      # results in $OUT, else gpu_out/
#   STEPS="kernel_tests train" bash launch/gpu_checks.sh
# Steps (each under its own time limit, so one that runs long costs only its share):
#   kernel_tests  the attention and kernel tests, where cuDNN and Pallas run for real
#   kernels       python -m kernels.bench (backends at the project's shapes, decode floors)
#   train         python -m launch.bench, CALVIN full: ms/step, MFU, peak memory vs estimate
#   gen1, gen64   python -m launch.generation_bench at batch 1 and 64 (frames/s, cached vs uncached)
# Wheels in .whl/ (launch/gpu_wheels.sh) are installed first, for machines without an index.
# Output: log.txt (every step's output and a closing status line per step) and one JSON each.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-gpu_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
log="$out/log.txt"
all="kernel_tests kernels train gen1 gen64"
for name in ${STEPS:-$all}; do
    case " $all " in *" $name "*) ;; *) echo "STEPS: no step '$name'; choose from: $all" >&2; exit 2 ;; esac
done
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee "$log"
status=()
step() {  # name, time limit in seconds, command...
    local name=$1 limit=$2
    shift 2
    case " ${STEPS:-$all} " in *" $name "*) ;; *) return ;; esac
    local start=$SECONDS
    echo "== $name (limit ${limit}s): $*" | tee -a "$log"
    timeout "$limit" "$@" >> "$log" 2>&1
    status+=("$name: exit $? after $((SECONDS - start)) s")
    echo "${status[-1]}" | tee -a "$log"
}
step kernel_tests 100 python3 -m pytest -q -x tests/test_kernels.py tests/test_attention.py
step kernels 90 python3 -m kernels.bench --json="$out/kernels.json"
step train 240 python3 -m launch.bench --configs=calvin --variant=full --steps=5 \
    --json="$out/train.json"
step gen1 80 python3 -m launch.generation_bench --models=calvin,minecraft --contexts=96,192 \
    --json="$out/gen1.json"
step gen64 50 python3 -m launch.generation_bench --models=calvin --contexts=32,96,192 --batch=64 \
    --json="$out/gen64.json"
printf '%s\n' "== status" "${status[@]}" | tee -a "$log"
