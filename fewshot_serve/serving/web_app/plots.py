"""The page's two pictures: the support loss over the inner steps, and the held-out confusions.

Titles are drawn inside the figures (the plot components hide their labels), so no label covers
the top of a plot.
"""

from __future__ import annotations

from ..assessment import Assessment


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # a server has no display
    import matplotlib.pyplot as plt

    return plt


def loss_plot(losses: list[float]):
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(4, 2.6))
    axis.plot(range(len(losses)), losses, marker="o")
    axis.set_title("Support loss during adaptation", fontsize=10)
    axis.set_xlabel("inner step")
    axis.set_ylabel("support loss")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    plt.close(figure)
    return figure


def confusion_plot(assessment: Assessment):
    """The support set's held-out confusions: true class by row, predicted by column (None when there is
    no estimate: every class has a single image)."""
    if assessment.accuracy is None:
        return None
    plt = _pyplot()
    counts, ways = assessment.confusion, len(assessment.labels)
    side = min(8.0, 2.6 + 0.45 * ways)
    figure, axis = plt.subplots(figsize=(side, side))
    axis.imshow(counts, cmap="Blues")
    ticks = [label if len(label) <= 14 else label[:13] + "…" for label in assessment.labels]
    axis.set_title(f"Held-out support {assessment.noun}s", fontsize=10)
    axis.set_xticks(range(ways), ticks, rotation=45, ha="right")
    axis.set_yticks(range(ways), ticks)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true (held out)")
    if ways <= 12:  # the counts, where they still fit in their cells
        peak = max(max(row) for row in counts) or 1
        for t, row in enumerate(counts):
            for q, count in enumerate(row):
                if count:
                    axis.text(q, t, count, ha="center", va="center", color="white" if count > peak / 2 else "black")
    figure.tight_layout()
    plt.close(figure)
    return figure
