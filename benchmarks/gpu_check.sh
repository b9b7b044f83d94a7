#!/usr/bin/env bash
# Train the reference configuration on a CUDA GPU: seconds per epoch, the final loss, a sample.
#
# Batch 64, window 100, Embedding 256 -> GRU 1024 -> Linear, Adam 1e-3, 45 epochs of Great
# Expectations, precision auto (bf16 or fp16 autocast with the cuDNN GRU kernel). The reference
# system reports about 10 s per epoch on a GPU of 2019, and loss 0.617 after 45 epochs.
#
# Needs a machine with a CUDA GPU and Python with PyTorch (a CUDA build), numpy and
# safetensors. No network and no install step: charnn runs from this source tree. The corpus
# is great-expectations.txt in $CHARNN_CORPUS_DIR, or the path given as the first argument.
# Stops itself before 5 minutes (the run then ends early, with a checkpoint, and says so).
#
#   bash benchmarks/gpu_check.sh /path/to/great-expectations.txt
#   CHARNN_CORPUS_DIR=/data/corpora PYTHON=python3.11 bash benchmarks/gpu_check.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
corpus="${1:-${CHARNN_CORPUS_DIR:-.}/great-expectations.txt}"
if [ ! -f "$corpus" ]; then
    echo "gpu_check: no corpus at $corpus; pass the path of great-expectations.txt or set CHARNN_CORPUS_DIR" >&2
    exit 2
fi
python="${PYTHON:-python3}"
run_dir="$(mktemp -d)"
trap 'rm -rf "$run_dir"' EXIT

PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" timeout 295 "$python" - "$corpus" "$run_dir/run" <<'PYTHON'
import sys
import time

import torch

if not torch.cuda.is_available():
    sys.exit("gpu_check: PyTorch sees no CUDA GPU here")

from charnn.config import ModelConfig, SampleConfig, TrainConfig
from charnn.data.corpus import load_corpus
from charnn.generation import generate_text
from charnn.run_folder import load_checkpoint
from charnn.hardware import resolve_precision
from charnn.training import train
from charnn.vocab import Vocabulary

corpus_path, run_dir = sys.argv[1], sys.argv[2]
device = torch.device("cuda")
print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
corpus = load_corpus(corpus_path)
vocab = Vocabulary.from_text(corpus.text)
model_config = ModelConfig(vocab_size=len(vocab))
# 4.3 minutes of training leaves time for start-up, the sample and the 5-minute promise.
config = TrainConfig(epochs=45, device="cuda", precision="auto", time_limit=4.3)
print(f"corpus: {len(corpus.text):,} characters, {len(vocab)} distinct; "
      f"precision {str(resolve_precision('auto', device)).removeprefix('torch.')}; 45 epochs of batch 64 x window 100")

times = []
mark = [0.0]


def on_event(event):
    now = time.perf_counter()
    if event.kind == "start":
        mark[0] = now
    elif event.kind == "epoch":
        times.append(now - mark[0])
        mark[0] = now
        val = f"  val_loss {event.val_loss:.4f}" if event.val_loss is not None else ""
        print(f"epoch {event.epoch:2d}  {times[-1]:5.2f} s  loss {event.loss:.4f}{val}  "
              f"{event.chars_per_sec:,.0f} chars/s", flush=True)


start = time.perf_counter()
result = train(corpus, model_config, config, run_dir, on_event=on_event)  # the corpus's own characters: vocab
total = time.perf_counter() - start
steady = times[1:] or times
print(f"\nstopped by {result.stopped_by} after {len(times)} epochs in {total:.0f} s; "
      f"seconds per epoch: first {times[0]:.2f}, then mean {sum(steady) / len(steady):.2f} "
      f"(reference: about 10 s on a GPU of 2019)")
last = result.history[-1]
print(f"final loss {last['loss']:.4f}, val_loss {last.get('val_loss', float('nan')):.4f} "
      f"(reference: 0.617 training loss after 45 epochs)")

ckpt = load_checkpoint(result.last_checkpoint, device)
sample = generate_text(ckpt.model, ckpt.vocab, "Pip", 500, SampleConfig(temperature=0.5), seed=0)[0]
print("\nsample (temperature 0.5, seed 0):\nPip" + sample)
PYTHON
