"""charnn export (ONNX, or a web page that generates in the browser) and charnn import-keras
(the reference TensorFlow model as a checkpoint)."""

import argparse
import sys
from pathlib import Path

from charnn.cli.flags import add_encoding, checkpoint
from charnn.cli.progress import Progress
from charnn.errors import CharnnError, ConfigError

HELD_OUT_PHASE = "held-out loss, fp32 and int8"


def add_export_parser(commands) -> None:
    p = commands.add_parser("export", help="export a model as ONNX, or as a web page that generates in the browser",
                            parents=[checkpoint()],
                            description="Export a checkpoint: --format onnx writes one ONNX file (characters and "
                            "state in, logits and new state out; vocabulary and configuration in its metadata); "
                            "--format web writes a static folder whose index.html generates text in the browser "
                            "with onnxruntime-web, with no server behind it.")  # fmt: skip
    p.add_argument("--format", choices=("onnx", "web"), default="onnx", help="what to write (default: onnx)")
    p.add_argument("--out", type=Path, required=True, help="the .onnx file, or the folder for --format web")
    p.add_argument("--quantize", choices=("int8",), default=None, help="store int8 weights (a smaller file) and report "
                   "the held-out loss change")  # fmt: skip
    p.add_argument("--text", default=None, help="text to measure the loss change on (default: the held-out part of "
                   "the model's training corpus)")  # fmt: skip
    add_encoding(p, " of --text")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from charnn.interop.onnx import export_onnx
    from charnn.interop.web import export_web
    from charnn.run_folder import load_checkpoint

    if args.quantize and args.format != "onnx":
        raise ConfigError("--quantize applies to --format onnx only")
    ckpt = load_checkpoint(args.checkpoint)
    if args.format == "web":
        out = export_web(ckpt.model, ckpt.vocab, args.out, overwrite=args.overwrite)
        print(f"wrote {out}/ (index.html, model.onnx, model.json, onnxruntime-web); serve it with any static file "
              f"server, e.g. python -m http.server -d {out}")  # fmt: skip
        return 0
    text = _held_out_text(ckpt, args) if args.quantize else None
    # Scoring both graphs on the held-out text takes most of the time, so it has a bar.
    with Progress() as progress:
        result = export_onnx(ckpt.model, ckpt.vocab, args.out, quantize=args.quantize, text=text,
                             on_progress=lambda done, total: progress(HELD_OUT_PHASE, done, total),
                             overwrite=args.overwrite)  # fmt: skip
    line = f"wrote {result.path} ({result.size / 1e6:.2f} MB"
    print(line + (f"; fp32: {result.fp32_size / 1e6:.2f} MB)" if args.quantize else ")"))
    if result.loss_change is not None:
        print(f"held-out loss {result.fp32_loss:.4f} (fp32) -> {result.loss:.4f} ({args.quantize}) nats/char: "
              f"{result.loss_change:+.3%}")  # fmt: skip
    return 0


def _held_out_text(ckpt, args: argparse.Namespace) -> str | None:
    from charnn.data.corpus import load_corpus
    from charnn.data.dataset import of_checkpoint

    if args.text:
        return load_corpus(args.text, encoding=args.encoding).text
    try:
        text = of_checkpoint(ckpt).held_out_text()
    except CharnnError as error:
        print(f"charnn: warning: held-out loss not measured ({error}); pass --text TEXT", file=sys.stderr)
        return None
    if not text:
        print("charnn: warning: the model has no held-out text; pass --text TEXT to measure the loss", file=sys.stderr)
    return text or None


def add_import_keras_parser(commands) -> None:
    p = commands.add_parser("import-keras", help="turn a model trained with the reference TensorFlow code into a "
                            "checkpoint", description="Import the reference tutorial's Keras model (Embedding -> "
                            "GRU -> Dense). Its vocabulary is rebuilt from CORPUS as the reference built it: "
                            "sorted(set(text)); --reference reads the file as the reference did.")  # fmt: skip
    p.add_argument("weights", metavar="WEIGHTS", help="a Keras 3 *.weights.h5 file, or (with TensorFlow installed) "
                   "a TensorFlow checkpoint prefix such as checkpoints/ckpt_45")  # fmt: skip
    p.add_argument("--corpus", required=True, help="the text the model was trained on (file, URL or known name)")
    p.add_argument("--out", type=Path, required=True, metavar="CHECKPOINT_DIR", help="the checkpoint folder to write")
    p.add_argument("--raw", action="store_true", help="read the file's characters as they are: no byte-order mark "
                   "dropped, CRLF kept, no Gutenberg header cut (the reference's reading)")  # fmt: skip
    p.add_argument("--skip-chars", type=int, default=None, help="cut this many characters from the start of the "
                   "text (the reference cut 835)")  # fmt: skip
    p.add_argument("--reference", action="store_true", help="the reference's reading: --raw --skip-chars 835")
    add_encoding(p, " of the corpus")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out")
    p.set_defaults(run=run_import_keras)


def run_import_keras(args: argparse.Namespace) -> int:
    from charnn.interop.keras import REFERENCE_SKIP, import_keras

    raw = args.raw or args.reference
    skip = args.skip_chars if args.skip_chars is not None else (REFERENCE_SKIP if args.reference else 0)
    out = import_keras(args.weights, args.corpus, args.out, raw=raw, skip_chars=skip, encoding=args.encoding,
                       overwrite=args.overwrite)  # fmt: skip
    print(f"wrote checkpoint {out}; try: charnn generate {out} --prime ...")
    return 0
