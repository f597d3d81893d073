#!/usr/bin/env bash
# Prepare what a GPU session carries to the device machine (see docs/MODEL.md, "GPU runbook").
#
#   benchmarks/gpu_prepare.sh train [SHARD]   # one training shard (00..NN of ../shared/data/train)
#   benchmarks/gpu_prepare.sh eval            # the 24 Kodak images instead (evaluation only)
#   benchmarks/gpu_prepare.sh bench           # worker throughput: Redis + moto/Celery wheels
#   benchmarks/gpu_prepare.sh run [SHARD]     # benchmarks/gpu_run.sh: Kodak + as much of a shard as fits
#   benchmarks/gpu_prepare.sh restore         # put the weights moved aside back (before any commit)
#   ASIDE=0 benchmarks/gpu_prepare.sh MODE    # prepare and measure, but move no weights (a check)
#
# Every shipped model is 15 MB of fp16 weights and the whole working tree travels with each call,
# so the weights of models the call does not use (all but DEFAULT_MODEL, or the ids in
# $KEEP_MODELS) are moved aside into the git-ignored .gpu-aside/ first; `restore` puts them back.
# Never commit while they are aside (git would record their deletion; tests/test_golden.py fails).
#
# The device machine has torch 2.11 + torchvision 0.26 on Python 3.12 and nothing else of ours,
# and only the repository travels (not ../shared). So this puts, under git-ignored folders:
#   .whl/   wheels of our pure-Python / cp312 dependencies (via ../shared/tools/gpu-wheels.sh),
#   .gpu/   one training shard (.gpu/train) or the 24 Kodak images (.gpu/kodak), never both,
#           except in `run` mode (below)
# (both are in .gitignore). Then `run` with carry [".whl", ".gpu"] and a command that starts with
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD
# the working tree (~17 MiB with the weights) + wheels (~10 MiB) + a shard (<= 28 MiB) fit the
# 64 MiB that may travel per call; adding Kodak (15 MiB) would not. So `run` mode (one call of
# benchmarks/gpu_run.sh, which installs the wheels itself) carries Kodak and only as many images
# of the shard as fit, round-robin over its sources, with their manifest rows, leaving
# RUN_MARGIN_MIB (default 1) of the 64 MiB spare.
set -euo pipefail
mode=${1:-train}
shard=${2:-00}
root=$(git rev-parse --show-toplevel)
cd "$root"
shared=$(cd "$root/.." && pwd)/shared
mkdir -p "$(dirname "$(git rev-parse --git-path info/exclude)")"  # gpu-wheels.sh appends there

if [ "$mode" = restore ]; then
  if compgen -G ".gpu-aside/*.safetensors" >/dev/null; then mv .gpu-aside/*.safetensors archiver/codec/weights/; fi
  rmdir .gpu-aside 2>/dev/null || true
  git diff --quiet -- archiver/codec/weights && echo "weights restored; the tree is as committed" \
    || { echo "archiver/codec/weights differs from the commit: check git status" >&2; exit 1; }
  exit 0
fi
case "$mode" in train | eval | bench | run) ;; *) echo "usage: $0 train [SHARD] | eval | bench | run [SHARD] | restore" >&2; exit 2 ;; esac

# the weights a call carries: the default model's (or those of $KEEP_MODELS); the others go aside
keep=${KEEP_MODELS:-$(sed -n 's/^DEFAULT_MODEL = "\(.*\)"$/\1/p' archiver/codec/default.py)}
aside=()
for f in archiver/codec/weights/*.safetensors; do
  [ -e "$f" ] || continue
  id=$(basename "$f" .safetensors)
  case " $keep " in *" $id "*) ;; *) aside+=("$f") ;; esac
done
limit=$((64 * 1024 * 1024))
# bytes of the working tree a call carries: tracked + untracked-not-ignored files, less the
# weights that go aside (the same figure whether they are already aside or not)
tree_bytes() {
  git ls-files -co --exclude-standard -z | python3 -c '
import os, sys
skip = set(sys.argv[1:])
names = [n for n in sys.stdin.buffer.read().decode().split("\0") if n and n not in skip]
print(sum(os.path.getsize(n) for n in names if os.path.isfile(n)))' ${aside[@]+"${aside[@]}"}
}

rm -rf .whl .gpu
# Without dependencies: the device's own numpy/Pillow/scipy/pandas must stay in charge (compressai
# needs numpy < 2 and imports scipy, pandas, matplotlib and torch_geometric at import time; the
# device image has them, since compressai imports there with its own wheel alone). A bare torch
# environment here lacked `packaging`, `tqdm` and `einops` besides those: add more with
# EXTRA="name ..." if the first import on the device fails.
# shellcheck disable=SC2086
bash "$shared/tools/gpu-wheels.sh" safetensors click rich pydantic pydantic-core pydantic-settings \
  annotated-types typing-inspection typing-extensions python-dotenv sqlalchemy markdown-it-py mdurl \
  pygments packaging tqdm einops ${EXTRA:-} >/dev/null
case "$mode" in
  train) mkdir -p .gpu/train && cp "$shared/data/train/shard-$shard"/* .gpu/train/ ;;
  eval) mkdir -p .gpu/kodak && cp "$shared/data/kodak"/*.png .gpu/kodak/ && cp -r "$shared/anchors" .gpu/anchors ;;
  run)
    mkdir -p .gpu/kodak .gpu/train && cp "$shared/data/kodak"/*.png .gpu/kodak/
    room=$((limit - $(tree_bytes) - $(du -scb .whl .gpu | tail -n 1 | cut -f1) - ${RUN_MARGIN_MIB:-1} * 1048576))
    python3 - "$shared/data/train/shard-$shard" .gpu/train "$room" "$shared/data/train/manifest.csv" <<'PY'
import csv, shutil, sys
from pathlib import Path

src, dst, room, manifest = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
files = sorted(p for p in src.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
groups: dict[str, list[Path]] = {}
for f in files:  # names are SOURCE_NNNN.ext: round-robin over sources keeps the shard's variety
    groups.setdefault(f.stem.rsplit("_", 1)[0], []).append(f)
order = []
while any(groups.values()):
    order += [g.pop(0) for _, g in sorted(groups.items()) if g]
kept, used = [], 0
for f in order:
    if used + f.stat().st_size <= room:
        shutil.copy2(f, dst / f.name)
        kept.append(f.name)
        used += f.stat().st_size
if not kept:
    sys.exit(f"no room for any training image ({room} bytes left of the 64 MiB)")
names = set(kept)
rows = [r for r in csv.DictReader(manifest.open()) if Path(r["file"]).name in names] if manifest.exists() else []
if rows:  # archiver.train reads the sources' sampling weights from it
    with (dst / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
print(f".gpu/train: {len(kept)} of the {len(files)} images of {src.name} ({used / 2**20:.1f} MiB, "
      f"{len({k.rsplit('_', 1)[0] for k in kept})} sources)")
PY
    ;;
  bench)
    # benchmarks/worker_throughput.py starts moto's S3 server, a private redis-server and a real
    # Celery worker: their wheels (with dependencies, ~43 MiB: the tree + these stay under 64 MiB)
    # and this machine's redis-server, unpacked (run it with .gpu/redis/usr/bin on PATH and
    # .gpu/redis/usr/lib/x86_64-linux-gnu on LD_LIBRARY_PATH).
    python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform any -d .whl "moto[s3]" flask flask-cors celery redis \
      sqlalchemy alembic boto3 tenacity pydantic-settings rich click safetensors packaging >/dev/null
    mkdir -p .gpu/debs .gpu/redis
    (cd .gpu/debs && apt-get download redis-server redis-tools libjemalloc2 liblzf1 >/dev/null 2>&1)
    for f in .gpu/debs/*.deb; do dpkg -x "$f" .gpu/redis; done
    # keep the server only (Debian's redis-server is a symlink to redis-check-rdb)
    b=.gpu/redis/usr/bin
    cp "$b/redis-check-rdb" .gpu/server.tmp
    rm -f "$b"/redis-* && mv .gpu/server.tmp "$b/redis-server"
    rm -rf .gpu/debs .gpu/redis/usr/share .gpu/redis/etc .gpu/redis/lib
    ;;
esac

if [ "${ASIDE:-1}" = 0 ]; then
  for f in ${aside[@]+"${aside[@]}"}; do echo "would move aside: $(basename "$f" .safetensors) (ASIDE=0: left in place)"; done
else
  mkdir -p .gpu-aside
  for f in ${aside[@]+"${aside[@]}"}; do
    mv "$f" .gpu-aside/ && echo "moved aside: $(basename "$f" .safetensors) (benchmarks/gpu_prepare.sh restore)"
  done
fi

# what each call will carry: the tree (less the weights aside) plus the carried folders
tree=$(tree_bytes)
whl=$(du -scb .whl | tail -n 1 | cut -f1)
gpu=$(du -scb .gpu | tail -n 1 | cut -f1)
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
echo "travels per call: tree $(mib "$tree") MiB + .whl $(mib "$whl") MiB + .gpu $(mib "$gpu") MiB" \
  "= $(mib $((tree + whl + gpu))) of 64 MiB"
if [ $((tree + whl + gpu)) -gt $limit ]; then
  echo "too big for one call: drop images from .gpu/ or keep fewer models (KEEP_MODELS)" >&2
  exit 1
fi
echo "carry: [\".whl\", \".gpu\"]"
