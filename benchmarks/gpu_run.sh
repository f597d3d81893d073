#!/usr/bin/env bash
# One GPU call: train (resume, ~4 min) + cross-device check + throughput + latent refinement, all results
# under $OUT.
# Thin wrapper around benchmarks/gpu_run.py (its docstring says what each step does; docs/MODEL.md, "GPU runbook"
# how to prepare, call and bring results back).
#
#   bash benchmarks/gpu_run.sh                   # on the device: $OUT set, carry [".whl", ".gpu"]
#   bash benchmarks/gpu_run.sh --dry-run [--out DIR]   # here: CPU, toy sizes, < 2 minutes
#                                  # (with $PYTHON, else .venv/bin/python, else python3)
#
# Prepared by `benchmarks/gpu_prepare.sh run`. Knobs (environment): GPU_RUN_COMPILE=1,
# GPU_RUN_TRAIN_MINUTES, GPU_RUN_LR, GPU_RUN_BATCH, GPU_RUN_CROP, GPU_RUN_TOTAL_S, GPU_RUN_RESUME.
set -uo pipefail
export PYTHONUNBUFFERED=1
export GPU_RUN_T0=${GPU_RUN_T0:-$(date +%s)}  # the 9-minute budget counts from here
cd "$(dirname "$0")/.."

if [ "${1:-}" = --dry-run ]; then
  shift
  py=${PYTHON:-python3}
  [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && py=.venv/bin/python
  if [ "${1:-}" = --out ]; then out=$2; shift 2; else out=${OUT:-$(mktemp -d -t gpu-run-dry-XXXXXX)}; fi
  mkdir -p "$out" && : >"$out/gpu_run.log"
  exec "$py" benchmarks/gpu_run.py --dry-run --out "$out" "$@"
fi

: "${OUT:?set OUT to the folder whose files come back}"
mkdir -p "$OUT"
log="$OUT/gpu_run.log"
: >"$log"
say() { echo "[gpu_run.sh $(($(date +%s) - GPU_RUN_T0))s] $*" | tee -a "$log"; }

if ! compgen -G ".whl/*.whl" >/dev/null; then
  say "no wheels in .whl/: run benchmarks/gpu_prepare.sh run here first and carry [\".whl\", \".gpu\"]"
  exit 1
fi
say "installing $(ls .whl/*.whl | wc -l) carried wheels into /tmp/site"
if ! python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tee -a "$log"; then
  say "wheel install failed"
  exit 1
fi
export PYTHONPATH=/tmp/site:$PWD

# preflight: a missing module costs seconds here, not the call
if ! python3 - 2>&1 <<'EOF' | tee -a "$log"; then
import sys
try:
    import torch
    import archiver.codec.api  # noqa: F401
    import archiver.train  # noqa: F401
except ModuleNotFoundError as e:
    print(f"PREFLIGHT FAILED: module {e.name!r} is missing ({e}); add its wheel: "
          f"EXTRA=\"{e.name}\" benchmarks/gpu_prepare.sh run", flush=True)
    sys.exit(1)
except Exception as e:  # an import that fails for another reason
    print(f"PREFLIGHT FAILED: {type(e).__name__}: {e}", flush=True)
    sys.exit(1)
cuda = torch.cuda.is_available()
print(f"preflight ok: python {sys.version.split()[0]}, torch {torch.__version__}, "
      f"cuda {torch.cuda.get_device_name() if cuda else 'NOT available'}", flush=True)
EOF
  say "stopping: the preflight failed"
  exit 1
fi
for d in .gpu/train .gpu/kodak; do [ -d "$d" ] || say "warning: $d is missing (its steps will be skipped)"; done

python3 benchmarks/gpu_run.py --out "$OUT" "$@"
rc=$?
if [ $rc -ne 0 ] && [ $rc -ne 2 ]; then
  # the process died (a crash, not a failed step): run the steps it did not reach
  say "gpu_run.py exited with $rc: continuing with the remaining steps"
  python3 benchmarks/gpu_run.py --out "$OUT" --continue "$@"
  rc=$?
fi
say "finished (status $rc); files in \$OUT:"
ls -la "$OUT" | tee -a "$log"
exit $rc
