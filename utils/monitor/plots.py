"""PNG plots of training runs (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

from utils.monitor.metrics_log import read_metrics


def plot_training(metrics_file: Path, out_png: Path, title: str) -> Path | None:
    """Loss (train and eval) and learning rate against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_file) if Path(metrics_file).exists() else []
    train = [(r["step"], r["loss"], r["lr"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval/loss"]) for r in records if "eval/loss" in r]
    if not train:
        return None
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    ax_loss.plot([t[0] for t in train], [t[1] for t in train], label="train loss")
    if evals:
        ax_loss.plot([e[0] for e in evals], [e[1] for e in evals], "o-", label="validation loss")
    ax_loss.set_ylabel("loss (nats/token)")
    ax_loss.legend()
    ax_loss.set_title(title)
    ax_lr.plot([t[0] for t in train], [t[2] for t in train], color="tab:orange")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
