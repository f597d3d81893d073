#!/bin/bash
# The measurements that decide whether a newly registered model ships (docs/MODEL.md, *Shipping a
# model*), in one unattended run on the 2-core dev machine, one process per core:
#   benchmarks/register_eval.sh NEW OLD     e.g. benchmarks/register_eval.sh compact-v8 compact-v7
# NEW must already be registered (archiver register-model); OLD is the model it must beat, whose
# results files exist. A step that fails stops the run (each background job is waited for by pid).
# Writes benchmarks/results/{kodak-NEW,kodak-NEW-effort1}.json (+ RD plots), floor-vs-avif-NEW.json,
# rdo-study-kodak2x-all24-NEW.json, NEW-vs-OLD-kodak.json and NEW-vs-OLD-kodak2x.json; logs go to
# runs/register-NEW/, and register_report.py's markdown of all of it to runs/register-NEW/report.md.
# 13-25 minutes with nothing else running (13 for compact-v9; 24 for compact-v10 on a machine running at half speed).
set -euo pipefail
NEW=${1:?new model id}
OLD=${2:?model to beat}
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
R=benchmarks/results
A=../shared/anchors/kodak
LOG=runs/register-$NEW
mkdir -p "$LOG"
AVIF_FROM=$R/floor-vs-avif-$OLD-grid512.json
[ -f "$AVIF_FROM" ] || AVIF_FROM=$R/floor-vs-avif-$OLD.json

ev() { # effort, output name, OLD's results at that effort
  OMP_NUM_THREADS=1 $PY -m archiver eval ../shared/data/kodak --model "$NEW" --device cpu --effort "$1" \
    --out "$R/$2.json" --plot "$R/$2-rd.png" \
    --reference $A/published/vtm.json --anchor $A/published/bpg_444_x265_ycbcr.json \
    $(for m in jpeg_420 jpeg_444 webp avif_444_psnr jpegxl dct8_context; do echo --anchor $A/measured/$m.json; done) \
    --anchor "$R/$3.json"
}
date
# 1. Kodak, 24 images x 8 qualities, at efforts 0 and 1, against OLD at the same effort
ev 0 "kodak-$NEW" "kodak-$OLD" > "$LOG/eval-effort0.txt" 2>&1 & e0=$!
ev 1 "kodak-$NEW-effort1" "kodak-$OLD-effort1" > "$LOG/eval-effort1.txt" 2>&1 & e1=$!
wait $e0; wait $e1
date
# 2. bytes at the 40 dB floor against AVIF (AVIF's deterministic search reused), and Kodak 2x on
#    all 24 images against AVIF
$PY benchmarks/floor_vs_avif.py --model "$NEW" --threads 1 --avif-from "$AVIF_FROM" \
  --out "$R/floor-vs-avif-$NEW.json" > "$LOG/floor.txt" 2>&1 & floor=$!
$PY benchmarks/rdo_study.py --model "$NEW" --images $(for i in $(seq -w 1 24); do echo kodim$i; done) \
  --upsample 2 --crop 1024 --settings 1 --qualities 20 40 60 --avif 55,70,82,90 --threads 1 \
  --out "$R/rdo-study-kodak2x-all24-$NEW.json" > "$LOG/rdo-2x-all24.txt" 2>&1 & rdo=$!
wait $floor; wait $rdo
date
# 3. NEW against OLD, weights to weights: Kodak 24 x 4 qualities, and the three-image 2x proxy, at
#    effort 1, the default (through compact-v11 these ran at effort 0; fitted y tables change what
#    RDOQ chooses, so the default effort is the one that counts)
W=archiver/codec/weights
$PY benchmarks/weights_compare.py "$W/$OLD.safetensors" "$W/$NEW.safetensors" --threads 2 --effort 1 \
  --out "$R/$NEW-vs-${OLD#compact-}-kodak.json" > "$LOG/vs-old-kodak.txt" 2>&1
$PY benchmarks/weights_compare.py "$W/$OLD.safetensors" "$W/$NEW.safetensors" --threads 2 --effort 1 \
  --images kodim03 kodim23 kodim05 --upsample 2 --crop 1024 --qualities 20 40 60 \
  --out "$R/$NEW-vs-${OLD#compact-}-kodak2x.json" > "$LOG/vs-old-kodak2x.txt" 2>&1
date
tail -n 1 "$LOG/floor.txt" "$LOG/vs-old-kodak.txt" "$LOG/vs-old-kodak2x.txt"
$PY benchmarks/register_report.py "$NEW" "$OLD" > "$LOG/report.md"
echo "report: $LOG/report.md"
