"""The loss curves of a run, drawn from its metrics.jsonl into RUN_DIR/loss.png.

Training and validation loss against characters seen, with epochs marked along the top and
the best validation loss ringed, so over-fitting shows at a glance.
"""

import io
import json
from pathlib import Path

from charnn import atomic
from charnn.errors import RunDirError

PLOT = "loss.png"


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise RunDirError(f"{run_dir} has no metrics.jsonl to plot; is it a charnn run folder?")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a crash
    return records


def plot_run(run_dir: str | Path) -> Path:
    """Draw RUN_DIR/loss.png (written atomically) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise RunDirError(f"{run_dir}/metrics.jsonl is empty: nothing to plot yet")
    seen = [r["characters_seen"] / 1e6 for r in records]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    train_loss = [r.get("recent_loss", r["loss"]) for r in records]
    ax.plot(seen, train_loss, label="training loss", color="tab:blue")
    val = [(r["characters_seen"] / 1e6, r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", color="tab:orange", markersize=4)
        best_x, best_y = min(val, key=lambda point: point[1])
        ax.plot([best_x], [best_y], "o", markersize=12, markerfacecolor="none", color="tab:red",
                label=f"best validation {best_y:.4f}")  # fmt: skip
    # Epoch ends along the top, so the curve reads in epochs as well as characters.
    ends = [(r["characters_seen"] / 1e6, r["epoch"]) for r in records if r.get("kind") == "epoch"]
    for x, _ in ends:
        ax.axvline(x, color="grey", alpha=0.2, linewidth=1)
    if ends:
        top = ax.secondary_xaxis("top")
        shown = ends[:: max(1, len(ends) // 15)]
        top.set_xticks([x for x, _ in shown], [str(e) for _, e in shown])
        top.set_xlabel("epoch")
    ax.set_xlabel("characters seen (millions)")
    ax.set_ylabel("loss (nats per character)")
    ax.set_title(f"{run_dir.name}", loc="left")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    target = run_dir / PLOT
    picture = io.BytesIO()
    fig.savefig(picture, format="png")
    plt.close(fig)
    atomic.write_bytes(target, picture.getvalue())
    return target
