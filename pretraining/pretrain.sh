#!/usr/bin/env bash
# Pretrain charnn's base model on the corpus that build_corpus.py rebuilds (see README.md here).
#   bash pretraining/pretrain.sh TEXTS_DIR WORK_DIR    # WORK_DIR/data: prepared text; WORK_DIR/run: the run
# Run it again to continue an interrupted run; MINUTES (default 600) is the whole run's time limit.
set -euo pipefail
cd "$(dirname "$0")/.."
texts="${1:?give the folder of cleaned texts}" work="${2:?give a work folder}"
charnn=(.venv/bin/python -m charnn)
if [ -d "$work/run" ]; then
  exec "${charnn[@]}" train --resume "$work/run" --time-limit "${MINUTES:-600}"
fi
# 1% held out is 1.2 million characters: enough to compare checkpoints, quick to score.
"${charnn[@]}" prepare "$texts" --out "$work/data" --val-fraction 0.01
# The tuned recipe without what guards a small text against memorising (dropout, early stopping, a
# pull towards the initial weights): 120 million characters are not memorised in one pass.
exec "${charnn[@]}" train "$work/data" --out "$work/run" \
  --dropout 0 --lr 2e-3 --warmup-steps 200 --grad-clip 1 --ema 0.998 --ema-init-share 0 \
  --patience none --eval-every 2000 --checkpoint-every 500 --keep-last 2 --epochs 1 \
  --time-limit "${MINUTES:-600}" --threads "${THREADS:-1}" --seed 0
