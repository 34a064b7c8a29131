"""The look every figure of the experiments shares."""

from __future__ import annotations


def label_axes(ax, xlabel: str, ylabel: str, legend_size: int | None = 8) -> None:
    """Label `ax` (a matplotlib Axes), draw a light grid and, with `legend_size`, a legend of that font
    size when something on the axes has a label."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend_size and ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=legend_size)
