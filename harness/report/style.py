"""One look for every plot: seaborn's theme, one colour, line style and marker per backend in every figure (lines
stay apart in greyscale and where colours are close), legends outside the data, one width and DPI for every
image (FIGURE_WIDTH_IN x DPI pixels: figures line up in the page and none is shrunk by the browser), PNGs
written without pyplot (no global figure state, no display needed)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import seaborn as sns
from matplotlib.figure import Figure as MplFigure
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D

from harness.backends import BACKENDS
from harness.report.doc import Figure

Colour = tuple[float, float, float]

# One colour per backend, the same in every report: Okabe-Ito hues where they go, MARS in a strong red and its
# preview in a light one; backends this table does not know get the spare colours, then further hues.
_COLOURS = {"vllm": "#0072b2", "sglang": "#009e73", "continuum": "#e69f00", "continuum-dy": "#8c564b",
            "autellix": "#cc79a7", "infercept": "#56b4e9", "mars": "#d62728", "mars-preview": "#ff9896"}
_SPARE = ("#7f7f7f", "#bcbd22", "#17becf")
DPI = 100
FIGURE_WIDTH_IN = 12.0  # every figure: 1200 px wide at DPI
MAX_HEIGHT_IN = 12.0  # and at most 1200 px tall; a figure with more to show uses more columns
_MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*", "h", "<", ">")
_DASHES = ("-", "--", "-.", ":")


class Look(dict):  # type: ignore[type-arg]
    """A backend's line keywords for `Axes.plot` / `errorbar`: colour, line style, marker."""


def looks(colours: dict[str, Colour]) -> dict[str, Look]:
    """Backend -> its colour, line style and marker; backends in `colours`' order get distinct combinations
    (markers cycle over 11, line styles over 4)."""
    return {name: Look(color=colour, ls=_DASHES[i % len(_DASHES)], marker=_MARKERS[i % len(_MARKERS)])
            for i, (name, colour) in enumerate(colours.items())}


def palette(backends: Iterable[str]) -> dict[str, Colour]:
    """Backend -> colour: fixed for known backends, then the spare colours and further hues for the others."""
    names = sorted(set(backends), key=backend_order)
    unknown = [n for n in names if n not in _COLOURS]
    extra = [to_rgb(c) for c in _SPARE] + sns.color_palette("husl", max(len(unknown) - len(_SPARE), 0))
    spare = dict(zip(unknown, extra, strict=False))
    return {n: to_rgb(_COLOURS[n]) if n in _COLOURS else spare[n] for n in names}


def backend_order(name: str) -> tuple[int, str]:
    """Backends in registry order (baselines first, MARS last), unknown ones after, by name."""
    known = list(BACKENDS)
    return (known.index(name), name) if name in known else (len(known), name)


@contextmanager
def themed() -> Iterator[None]:
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.95):
        yield


def new_figure(height: float, width: float = FIGURE_WIDTH_IN) -> MplFigure:
    """A figure of the report's width (narrower only when asked) and `height` inches, capped at MAX_HEIGHT_IN."""
    return MplFigure(figsize=(width, min(height, MAX_HEIGHT_IN)), dpi=DPI, layout="constrained")


def legend_outside(fig: MplFigure, shown: dict[str, Look], title: str = "backend",
                   extra: Sequence[Line2D] = ()) -> None:
    """One legend for the whole figure, right of the axes: each backend's line as the figures draw it."""
    handles = [Line2D([], [], lw=2, ms=6, label=name, **look) for name, look in shown.items()]
    handles += list(extra)
    fig.legend(handles=handles, title=title, loc="outside right center", frameon=False)


TITLE_CHARS = 110  # a heading wider than this wraps (long settings would run off a 1,200 px image)


def heading(fig: MplFigure, text: str) -> None:
    """The figure's bold title, wrapped to fit its width."""
    import textwrap  # noqa: PLC0415

    fig.suptitle(textwrap.fill(text, TITLE_CHARS), fontweight="bold")


def save(fig: MplFigure, out_dir: Path, name: str, title: str, caption: str = "") -> Figure:
    """Write `out_dir/img/<name>.png`; the report's figure, with its path relative to `out_dir`."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")
    path = Path("img") / f"{slug}.png"
    (out_dir / "img").mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / path, dpi=DPI, facecolor="white")
    return Figure(path.as_posix(), title, caption)
