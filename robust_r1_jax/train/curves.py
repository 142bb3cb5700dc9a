"""Training curves as one PNG beside ``metrics.jsonl`` (``logs/curves.png``): SFT's loss, gradient norm and
learning rate; GRPO's reward components, loss and KL. Steps whose update was skipped are marked in red."""
from __future__ import annotations

import io
import math

CURVES_NAME = "curves.png"
REWARD_KEYS = ("reward/total", "reward/accuracy", "reward/format", "reward/degradation", "reward/length")
# run name -> panels of (title, metric keys drawn in it, log-scale y axis)
PANELS = {
    "sft": (("loss", ("loss",), False), ("gradient norm", ("grad_norm",), True),
            ("learning rate", ("learning_rate",), False)),
    "grpo": (("reward", REWARD_KEYS, False), ("loss", ("loss",), False), ("KL to the reference", ("kl",), False)),
}
PANEL_INCHES = (4.5, 3.2)
DPI = 100


def curves_png(records: list[dict], panels) -> bytes:
    """A row of line plots of ``records`` (metrics.jsonl rows: ``step`` plus scalars) as PNG bytes; a metric
    absent from every record leaves its line out, non-finite values leave gaps."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(PANEL_INCHES[0] * len(panels), PANEL_INCHES[1]),
                                squeeze=False)
    skipped = [r["step"] for r in records if r.get("skipped", 0) > 0]
    for ax, (title, keys, log_scale) in zip(axes[0], panels):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                steps, values = zip(*points)
                values = [v if math.isfinite(v) else math.nan for v in values]
                ax.plot(steps, values, label=key.split("/")[-1] if len(keys) > 1 else key, linewidth=1.2)
        for step in skipped:
            ax.axvline(step, color="tab:red", alpha=0.3, linewidth=1)
        if log_scale and any(r.get(k, 0) > 0 for r in records for k in keys):
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    return buffer.getvalue()
