"""Class balance of a dataset: per-class numbers and a bar chart that makes the rare classes obvious.

A class is called under-represented when it holds less than half of an even
share of the clips (under 1/16 of them with eight classes): these are the
classes SurV-Gen generates videos for.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

from survgen.classes import ClassVocabulary
from survgen.data.index import VideoIndex
from survgen.io import PNG_SOFTWARE, atomic_path


@dataclass(frozen=True)
class ClassStats:
    class_id: int
    code: str
    name: str
    clips: int
    videos: int  # recordings with at least one clip of the class
    frames: int  # labelled frames of the class, in clips or not
    share: float  # fraction of all clips
    rare: bool


def is_rare(count: int, total: int, num_classes: int) -> bool:
    """Under half of an even share of `total`."""
    return total > 0 and count < 0.5 * total / num_classes


def class_statistics(index: VideoIndex) -> list[ClassStats]:
    """One row per class of the vocabulary, zeros included."""
    vocabulary = index.vocabulary
    counts = index.class_counts()
    total = sum(counts.values())
    videos = {i: set() for i in counts}
    frames = dict.fromkeys(counts, 0)
    for clip in index.clips:
        videos[clip.class_id].add(clip.video_id)
    for segment in index.segments:
        frames[segment.class_id] += len(segment)
    return [
        ClassStats(i, vocabulary.code(i), vocabulary.name(i), counts[i], len(videos[i]), frames[i],
                   counts[i] / total if total else 0.0, is_rare(counts[i], total, len(vocabulary)))
        for i in counts
    ]


def class_balance_plot(counts: dict[int, int], vocabulary: ClassVocabulary, path: str | Path,
                       title: str = "Clips per class") -> Path:
    """Write a PNG bar chart of `counts` (class id -> number), rare classes highlighted; returns `path`."""
    # The object-oriented Agg canvas draws without pyplot, so no global matplotlib backend is touched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    path = Path(path)
    ids = list(range(len(vocabulary)))
    values = [int(counts.get(i, 0)) for i in ids]
    total = sum(values)
    rare = [is_rare(v, total, len(ids)) for v in values]
    colors = ["#d95f02" if r else "#1b9e77" for r in rare]
    labels = [f"{vocabulary.code(i)}\n" + "\n".join(textwrap.wrap(vocabulary.name(i), 15, break_long_words=False)) for i in ids]

    figure = Figure(figsize=(max(6.0, 1.1 * len(ids)), 4.8), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    bars = ax.bar(range(len(ids)), values, color=colors)
    top = max(values) if any(values) else 1
    for bar, value in zip(bars, values):
        share = f"\n{value / total:.0%}" if total else ""
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01 * top, f"{value}{share}",
                ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, top * 1.22)
    ax.set_xticks(range(len(ids)), labels, fontsize=7)
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(handles=[Patch(color="#1b9e77", label="common"),
                       Patch(color="#d95f02", label="under-represented (< ½ of an even share)")],
              fontsize=8, loc="upper right", frameon=False)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", metadata={"Software": PNG_SOFTWARE})
    return path
