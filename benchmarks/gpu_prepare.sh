#!/usr/bin/env bash
# Prepare what a GPU session carries to the device machine (see docs/MODEL.md, "GPU runbook").
#
#   benchmarks/gpu_prepare.sh train [SHARD]   # one training shard (00..NN of ../shared/data/train)
#   benchmarks/gpu_prepare.sh eval            # the 24 Kodak images instead (evaluation only)
#
# The device machine has torch 2.11 + torchvision 0.26 on Python 3.12 and nothing else of ours,
# and only the repository travels (not ../shared). So this puts, under git-ignored folders:
#   .whl/   wheels of our pure-Python / cp312 dependencies (via ../shared/tools/gpu-wheels.sh),
#   .gpu/   one training shard (.gpu/train) or the 24 Kodak images (.gpu/kodak), never both:
# (both are in .gitignore). Then `run` with carry [".whl", ".gpu"] and a command that starts with
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD
# the working tree (~17 MiB with the weights) + wheels (~10 MiB) + a shard (<= 28 MiB) fit the
# 64 MiB that may travel per call; adding Kodak (15 MiB) would not.
set -euo pipefail
mode=${1:-train}
shard=${2:-00}
root=$(git rev-parse --show-toplevel)
cd "$root"
shared=$(cd "$root/.." && pwd)/shared
mkdir -p "$(dirname "$(git rev-parse --git-path info/exclude)")"  # gpu-wheels.sh appends there
rm -rf .whl .gpu
bash "$shared/tools/gpu-wheels.sh" safetensors click rich pydantic pydantic-core pydantic-settings \
  annotated-types typing-inspection typing-extensions python-dotenv sqlalchemy markdown-it-py mdurl \
  pygments >/dev/null
case "$mode" in
  train) mkdir -p .gpu/train && cp "$shared/data/train/shard-$shard"/* .gpu/train/ ;;
  eval) mkdir -p .gpu/kodak && cp "$shared/data/kodak"/*.png .gpu/kodak/ && cp -r "$shared/anchors" .gpu/anchors ;;
  *) echo "usage: $0 train [SHARD] | eval" >&2; exit 2 ;;
esac
du -sh .whl .gpu
echo "carry: [\".whl\", \".gpu\"]"
