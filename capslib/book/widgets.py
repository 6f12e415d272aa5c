"""Sliders that keep working in the static HTML book, with no kernel behind them.

The book is built from notebooks that were executed beforehand (see
:mod:`capslib.book`), so a slider in the rendered page cannot call Python.
The trick (DESIGN.md §6) is to precompute every panel, keep all of them in the
page, and let the browser switch between them:

* each panel is a PNG (usually a matplotlib figure) shown by an ``Image`` widget;
* the panels sit in an ipywidgets 8 ``Stack``, which shows one child at a time;
* a ``SelectionSlider`` is linked to the Stack *in JavaScript* with
  ``jslink((slider, "index"), (stack, "selected_index"))``. The synced trait of
  a ``SelectionSlider`` is ``index``, not ``value``.

Because the link lives on the client, the widget state that papermill saves in
the executed notebook (``metadata.widgets``) is all the page needs: the
``@jupyter-widgets/html-manager`` script rebuilds the widgets and the link, and
moving the slider switches the panel with no kernel. The same widgets work
unchanged in a live Jupyter session.

Typical use in a chapter::

    panels = {pr: plots.accuracy_curve(rows, pr=pr) for pr in (0.0, 0.125, 0.25)}
    slider_panels(panels, description="PR")

Every figure is rendered to PNG once and then closed, so it does not also
appear as a stray inline figure under the cell.
"""
from __future__ import annotations

import io
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Optional, Union

import ipywidgets as widgets

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Explorer", "figure_png", "slider_panels", "slider_grid"]

#: A panel is either a matplotlib Figure or PNG bytes that are already rendered.
Panel = Union["Figure", bytes]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def figure_png(fig, dpi: Optional[int] = None, close: bool = True) -> bytes:
    """Render a matplotlib figure to PNG bytes.

    ``close=True`` (the default) closes the figure afterwards: the inline
    backend would otherwise display every open figure at the end of the cell,
    duplicating the panel as a static image below the slider.
    ``dpi`` defaults to :data:`capslib.book.plots.BOOK_DPI`, the resolution of every figure of the book.
    The figure keeps its own size (no ``bbox_inches="tight"``), so panels
    made with the same ``figsize`` are the same size and the page does not
    jump while the slider moves; ``layout="constrained"`` trims margins.
    """
    from .plots import BOOK_DPI

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or BOOK_DPI)
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return buf.getvalue()


def _as_png(panel: Panel) -> bytes:
    """Return PNG bytes for a Figure or for bytes that already are a PNG."""
    if isinstance(panel, (bytes, bytearray)):
        if bytes(panel[:8]) != _PNG_MAGIC:
            raise ValueError("panel bytes are not a PNG image (bad magic number)")
        return bytes(panel)
    if hasattr(panel, "savefig"):
        return figure_png(panel)
    raise TypeError(
        f"a panel must be a matplotlib Figure or PNG bytes, not {type(panel).__name__}"
    )


def _image(png: bytes) -> widgets.Image:
    """An Image widget that shrinks to the page width instead of overflowing it."""
    return widgets.Image(
        value=png, format="png", layout=widgets.Layout(max_width="100%", height="auto")
    )


def _label(key: Hashable) -> str:
    """Slider label of a panel key: floats print short (0.125, not 0.12500000)."""
    if isinstance(key, float):
        return f"{key:g}"
    return str(key)


def _slider(labels: Sequence[str], description: str) -> widgets.SelectionSlider:
    """A SelectionSlider over ``labels`` whose ``index`` selects a Stack child.

    ``continuous_update=True`` makes the panel follow the handle while it is
    dragged, which is what a reader expects from a precomputed explorer.
    """
    return widgets.SelectionSlider(
        options=list(labels),
        index=0,
        description=description,
        continuous_update=True,
        style={"description_width": "initial"},
        layout=widgets.Layout(width="100%", max_width="36em"),
    )


def _stack(children: Sequence[widgets.Widget]) -> widgets.Stack:
    """A Stack that shows its first child until a linked slider moves."""
    return widgets.Stack(children=list(children), selected_index=0)


def _unique_labels(keys: Sequence[Hashable], what: str) -> list[str]:
    """Labels for ``keys``; two keys printing the same would confuse the reader."""
    labels = [_label(k) for k in keys]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{what} values {list(keys)!r} give duplicate slider labels {labels!r}")
    return labels


class Explorer(widgets.VBox):
    """A ``VBox`` of sliders and panels with a short, stable text repr.

    The default repr of a widget tree embeds the first bytes of every PNG and
    changes with every figure tweak; the executed notebook stores it as the
    cell's ``text/plain`` output, which nbval compares. This repr only names
    the sliders and their positions. The front end sees a plain VBox.
    ``links`` keeps the slider-to-Stack jslinks, for inspection and tests.
    """

    def __init__(self, children, summary: str, links=()):
        super().__init__(children)
        self._summary = summary
        self.links = list(links)

    def __repr__(self) -> str:
        return self._summary


def slider_panels(panels: Mapping[Hashable, Panel], description: str = "PR") -> Explorer:
    """One slider that switches between precomputed panels, kernel-free.

    ``panels`` maps a slider label (e.g. a pruning ratio) to a matplotlib
    Figure or PNG bytes; the slider positions follow the mapping's order.
    Returns an :class:`Explorer` (a ``VBox([slider, stack])``); display it as
    a cell's last expression so the executed notebook stores its state for the
    static book.
    """
    if not panels:
        raise ValueError("slider_panels needs at least one panel")
    labels = _unique_labels(list(panels), description)
    stack = _stack([_image(_as_png(p)) for p in panels.values()])
    slider = _slider(labels, description)
    link = widgets.jslink((slider, "index"), (stack, "selected_index"))
    summary = f"slider_panels({description}: {', '.join(labels)})"
    return Explorer([slider, stack], summary, links=[link])


def _grid_axes(keys: Sequence[tuple]) -> tuple[list, list]:
    """Distinct first and second key values, each in order of first appearance."""
    outer: list = []
    inner: list = []
    for key in keys:
        if not (isinstance(key, tuple) and len(key) == 2):
            raise TypeError(f"slider_grid keys must be (a, b) pairs, got {key!r}")
        a, b = key
        if a not in outer:
            outer.append(a)
        if b not in inner:
            inner.append(b)
    return outer, inner


def slider_grid(
    panels: Mapping[tuple[Hashable, Hashable], Panel],
    names: tuple[str, str] = ("C/D", "PR"),
) -> Explorer:
    """Two sliders over a full grid of precomputed panels, kernel-free.

    ``panels`` maps ``(a, b)`` (e.g. ``("32/4", 0.25)``) to a Figure or PNG
    bytes, and must hold every combination of the a and b values (a missing
    pair raises ``ValueError``, since the static page cannot compute it).
    The first slider (``names[0]``) drives an outer Stack with one inner Stack
    per ``a``; the second slider (``names[1]``) is jslinked to *every* inner
    Stack, so it keeps its position when ``a`` changes. All switching happens
    in the browser.
    """
    if not panels:
        raise ValueError("slider_grid needs at least one panel")
    outer_keys, inner_keys = _grid_axes(list(panels))
    missing = [(a, b) for a in outer_keys for b in inner_keys if (a, b) not in panels]
    if missing:
        raise ValueError(f"slider_grid needs a full grid of panels; missing {missing!r}")
    outer_slider = _slider(_unique_labels(outer_keys, names[0]), names[0])
    inner_slider = _slider(_unique_labels(inner_keys, names[1]), names[1])
    inner_stacks, links = [], []
    for a in outer_keys:
        stack = _stack([_image(_as_png(panels[(a, b)])) for b in inner_keys])
        links.append(widgets.jslink((inner_slider, "index"), (stack, "selected_index")))
        inner_stacks.append(stack)
    outer_stack = _stack(inner_stacks)
    links.insert(0, widgets.jslink((outer_slider, "index"), (outer_stack, "selected_index")))
    summary = (
        f"slider_grid({names[0]}: {', '.join(outer_slider.options)}; "
        f"{names[1]}: {', '.join(inner_slider.options)})"
    )
    return Explorer([outer_slider, inner_slider, outer_stack], summary, links=links)
