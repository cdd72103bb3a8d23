"""``results.png``: one horizontal bar chart per scenario, taskfan in colour, peers in grey."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ._harness import Scenario, format_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes

TASKFAN_COLOUR = "#d95f02"
PEER_COLOUR = "#a6a6a6"
INCHES_PER_BAR = 0.38
INCHES_PER_TITLE = 0.75
LABEL_ROOM = 1.9  # x-axis span as a multiple of the longest bar, leaving room for labels


def write_chart(scenarios: list[Scenario], path: Path) -> bool:
    """Draw every scenario into the PNG at ``path``; False (saying why) if it cannot."""
    if not scenarios:
        return False
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: no chart at {path}", file=sys.stderr)
        return False
    matplotlib.use("Agg")  # renders to a file without a display or a GUI toolkit
    import matplotlib.pyplot as plt

    heights = [INCHES_PER_TITLE + INCHES_PER_BAR * len(s.figures) for s in scenarios]
    fig, axes = plt.subplots(
        len(scenarios),
        1,
        figsize=(10, sum(heights)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, scenario in zip(axes[:, 0], scenarios, strict=True):
        _draw(ax, scenario)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"chart written to {path}", file=sys.stderr)
    return True


def _draw(ax: Axes, scenario: Scenario) -> None:
    names = list(scenario.figures)
    values = [scenario.figures[name] or 0.0 for name in names]
    longest = max(values, default=0.0) or 1.0
    rows = range(len(names))
    colours = [TASKFAN_COLOUR if name == "taskfan" else PEER_COLOUR for name in names]
    ax.barh(rows, values, color=colours, height=0.7)
    ax.set_yticks(rows, names, fontsize=9)
    ax.invert_yaxis()  # first contender (taskfan) on top, as in the table
    ax.set_xlim(0, longest * LABEL_ROOM)
    ax.set_xticks([])  # every bar carries its own value
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    for row, name in enumerate(names):
        ax.text(values[row] + longest * 0.01, row, _label(scenario, name), va="center", fontsize=8)
    for tick, name in zip(ax.get_yticklabels(), names, strict=True):
        if name == "taskfan":
            tick.set_color(TASKFAN_COLOUR)
            tick.set_fontweight("bold")
    better = "higher" if scenario.higher_is_better else "lower"
    ax.set_title(
        f"{scenario.name}\nunit: {scenario.unit}, {better} is better", loc="left", fontsize=10
    )


def _label(scenario: Scenario, name: str) -> str:
    text = format_figure(scenario.figures[name], scenario.unit)
    note = scenario.notes.get(name)
    return f"{text}  ({note})" if note else text
