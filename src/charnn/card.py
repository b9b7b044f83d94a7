"""A checkpoint's model card: what the model is, what it was trained on, how well it does, and
how to use it, as Markdown.

Every checkpoint folder holds one as ``README.md``, the name model hubs and static file hosts
show first, so a model shared anywhere explains itself; `charnn info` prints it. It is written
from the checkpoint's own metadata, so a folder written before cards existed gets the same card
from `model_card(read_metadata(path), path)`.

    print(model_card(read_metadata("runs/ge/best"), "runs/ge/best"))
"""

import math
from pathlib import Path
from typing import Any

CARD = "README.md"
_NATS_TO_BITS = 1 / math.log(2)


def model_card(metadata: dict[str, Any], path: str | Path, parameters: int | None = None) -> str:
    """The card of the checkpoint whose `checkpoint.json` holds `metadata`, found at `path`."""
    import charnn

    model, training, corpus = metadata.get("model", {}), metadata.get("training", {}), metadata.get("corpus", {})
    name = Path(path).name or str(path)
    lines = [f"# {name}: a charnn model", "", _shape(model, parameters), ""]
    lines += ["## Trained on", "", *_trained_on(corpus, training), ""]
    lines += ["## How well it does", "", *_figures(training, metadata.get("evaluation")), ""]
    lines += [
        "## Use",
        "",
        "```bash",
        "# with charnn installed (in a clone of its repository: bash scripts/setup.sh)",
        f'charnn generate {name} --prime "The " --length 300   # {name}: this folder',
        f"charnn score {name} some-text.txt",
        "```",
        "",
        "## Licence",
        "",
        metadata.get("licence")
        or "The weights are derived from the training text above: whatever terms apply to that text apply to them.",
        "",
        f"Written by charnn {charnn.__version__}; the folder's `checkpoint.json` "
        "holds everything above, and `model.safetensors` the weights.",
    ]
    return "\n".join(lines) + "\n"


def _shape(model: dict[str, Any], parameters: int | None) -> str:
    cell = str(model.get("cell", "gru")).upper()
    layers = model.get("num_layers", 1)
    stack = f"{layers} x {cell} {model.get('hidden_size')}" if layers > 1 else f"{cell} {model.get('hidden_size')}"
    shape = (
        f"A character-level language model: Embedding {model.get('embedding_dim')} → {stack} → Linear to "
        f"{model.get('vocab_size')} characters"
    )
    return shape + (f", {parameters:,} parameters." if parameters else ".")


def _trained_on(corpus: dict[str, Any], training: dict[str, Any]) -> list[str]:
    lines = []
    if corpus:
        held_out = (training.get("config") or {}).get("val_fraction")
        lines.append(
            f"- Text: {corpus.get('name', '?')} ({corpus.get('characters', 0):,} characters, sha256 "
            f"{str(corpus.get('sha256', '?'))[:16]}...)" + (f", the last {held_out:.0%} held out." if held_out else ".")
        )
    parent = training.get("init_from")
    if isinstance(parent, dict):
        added = len(parent.get("added_characters") or [])
        lines.append(
            f"- Fine-tuned from {parent.get('path')} (weights sha256 {str(parent.get('weights_sha256'))[:16]}...), "
            f"with {added} characters added to its vocabulary."
        )
    if training.get("step") is not None:
        minutes = (training.get("elapsed_seconds") or 0) / 60
        preset = (training.get("config") or {}).get("preset")
        lines.append(
            f"- Training: {training['step']:,} steps, {training.get('characters_seen', 0):,} characters seen, "
            f"{minutes:,.1f} minutes, {training.get('precision', '?')}"
            + (f", options starting from the `{preset}` preset." if preset else ".")
        )
    stages = training.get("stages")
    if isinstance(stages, list) and len(stages) > 1:
        lines.append(f"- In {len(stages)} stages, each starting from the one before:")
        lines += [
            f"  {i}. {stage.get('step') or 0:,} steps, {stage.get('characters_seen') or 0:,} characters, "
            f"{(stage.get('elapsed_seconds') or 0) / 60:,.1f} minutes"
            + (f", held-out loss {stage['best_val_loss']:.4f}" if isinstance(stage.get("best_val_loss"), float) else "")
            for i, stage in enumerate(stages, 1)
        ]
    if training.get("machine"):
        lines.append(f"- Trained on: {training['machine']}.")
    return lines or ["- Not recorded."]


def _figures(training: dict[str, Any], evaluation: dict[str, Any] | None) -> list[str]:
    """The held-out loss of training, and `charnn evaluate`'s report where one was kept."""
    lines = []
    best = training.get("best_val_loss")
    if isinstance(best, float):
        lines.append(f"- Best held-out loss in training: {best:.4f} nats/char ({best * _NATS_TO_BITS:.3f} bits/char).")
    last = training.get("val_loss")
    if isinstance(last, float) and last != best:
        lines.append(
            f"- Held-out loss at this checkpoint: {last:.4f} nats/char ({last * _NATS_TO_BITS:.3f} bits/char)."
        )
    if isinstance(evaluation, dict):
        lines += [
            "",
            f"On {evaluation.get('text', 'its held-out text')} ({evaluation.get('characters', 0):,} characters):",
            "",
            "| model | nats/char | bits/char |",
            "|---|---:|---:|",
        ]
        for label, key in (("this model", "loss"), ("Kneser-Ney 5-gram", "ngram_loss"), ("gzip -9", "gzip_loss")):
            if isinstance(evaluation.get(key), float):
                lines.append(f"| {label} | {evaluation[key]:.4f} | {evaluation[key] * _NATS_TO_BITS:.4f} |")
    elif isinstance(evaluation, list) and evaluation:
        lines += ["", *_evaluation_table(evaluation)]
    return lines or ["- No held-out text was scored."]


def _evaluation_table(rows: list[dict[str, Any]]) -> list[str]:
    """Texts the model never saw, each scored on a held-out part beside the baselines fitted on the rest."""
    lines = [
        "On texts it was not trained on, in nats per character (lower is better): this model alone on each",
        "text's held-out part, beside a Kneser-Ney 5-gram fitted on the rest of that text, and gzip -9.",
        "",
        "| text | held-out characters | this model | 5-gram | gzip -9 | against the 5-gram |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        loss, ngram, gz = (row.get(key) for key in ("loss", "ngram_loss", "gzip_loss"))
        if not all(isinstance(x, float) for x in (loss, ngram, gz)):
            continue
        lines.append(
            f"| {row.get('text', '?')} | {row.get('characters', 0):,} | {loss:.4f} | {ngram:.4f} | {gz:.4f} "
            f"| {loss / ngram - 1:+.1%} |"
        )
    return lines
