#!/usr/bin/env bash
# Pretrain charnn's base model on the corpus that build_corpus.py rebuilds (see README.md here), in two
# stages; run it again to continue whichever stage was interrupted.
#   bash pretraining/pretrain.sh TEXTS_DIR WORK_DIR   # WORK_DIR/data: prepared text; run: stage 1; cool: stage 2
# Then: python pretraining/export_base.py WORK_DIR/cool --eval-dir EVAL_DIR --machine "..." --data WORK_DIR/data
set -euo pipefail
cd "$(dirname "$0")/.."
texts="${1:?give the folder of cleaned texts}" work="${2:?give a work folder}"
charnn=(.venv/bin/python -m charnn)
threads="${THREADS:-2}"

# 1% held out is 1.2 million characters: enough to compare checkpoints, quick to score.
[ -d "$work/data" ] || "${charnn[@]}" prepare "$texts" --out "$work/data" --val-fraction 0.01

# Stage 1: the tuned recipe without what guards a small text against memorising (dropout, early
# stopping, a pull towards the initial weights), at a constant 2e-3. Its held-out loss was best at
# step 4,000 (1.3894) and worse after (1.4055 at 6,000): the constant rate had stopped helping, so
# the stage ends there, and stage 2 anneals.
if [ -d "$work/run" ]; then
  "${charnn[@]}" train --resume "$work/run" --max-steps 4000 --threads "$threads"
else
  "${charnn[@]}" train "$work/data" --out "$work/run" --init-from none \
    --dropout 0 --lr 2e-3 --warmup-steps 200 --grad-clip 1 --ema 0.998 --ema-init-share 0 \
    --patience none --eval-every 2000 --checkpoint-every 500 --keep-last 2 --max-steps 4000 \
    --threads "$threads" --seed 0
fi

# Stage 2: from stage 1's best, the rate warmed up to 1e-3 and annealed along a cosine to a tenth over
# 1,500 steps (9.6 million more characters), on another order of the windows (--seed 1).
if [ -d "$work/cool" ]; then
  exec "${charnn[@]}" train --resume "$work/cool" --threads "$threads"
fi
exec "${charnn[@]}" train "$work/data" --init-from "$work/run/best" --out "$work/cool" \
  --lr 1e-3 --lr-schedule cosine --warmup-steps 100 --max-steps 1500 --dropout 0 --grad-clip 1 \
  --ema 0.998 --ema-init-share 0 --patience none --eval-every 500 --checkpoint-every 250 --keep-last 2 \
  --threads "$threads" --seed 1
