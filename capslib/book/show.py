"""Display in a chapter: every table and figure with its provenance footer
(:func:`capslib.book.plots.provenance_footer`), and the static sliders that switch precomputed panels.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import pandas as pd
from matplotlib.figure import Figure


# ======================================================================================
# Display
# ======================================================================================
def show_table(df: pd.DataFrame, footer) -> None:
    """Display a table and, under it, its provenance footer (:func:`capslib.book.plots.provenance_footer`)."""
    from IPython.display import display

    display(df)
    display(footer)


def show_figure(fig, footer, dpi: Optional[int] = None) -> None:
    """Display a figure as a PNG (at :data:`capslib.book.plots.BOOK_DPI`) with its provenance footer under it."""
    from IPython.display import Image, display

    from .plots import BOOK_DPI
    from .widgets import figure_png

    display(Image(data=figure_png(fig, dpi=dpi or BOOK_DPI)))
    display(footer)


def show_with_slider(static_fig, panels: Mapping[Any, Any], description: str, footer,
                     dpi: Optional[int] = None) -> None:
    """A static figure of a whole grid, a slider over the same grid, and the provenance footer.

    The slider (:func:`capslib.book.widgets.slider_panels`) switches precomputed
    panels in the browser, with no kernel; the static figure shows every panel
    at once, for print and for readers without JavaScript.
    """
    from IPython.display import Image, display

    from .plots import BOOK_DPI
    from .widgets import figure_png, slider_panels

    dpi = dpi or BOOK_DPI
    display(Image(data=figure_png(static_fig, dpi=dpi)))
    display(slider_panels({k: figure_png(f, dpi=dpi) for k, f in panels.items()}, description=description))
    display(footer)


def show_with_slider_grid(static_fig: Figure, panels: Mapping[tuple[Any, Any], Figure], names: tuple[str, str],
                          footer, dpi: Optional[int] = None) -> None:
    """A static figure of a whole grid, two sliders over the same grid (:func:`capslib.book.widgets.slider_grid`),
    and the provenance footer."""
    from IPython.display import Image, display

    from .plots import BOOK_DPI
    from .widgets import figure_png, slider_grid

    dpi = dpi or BOOK_DPI
    display(Image(data=figure_png(static_fig, dpi=dpi)))
    display(slider_grid({k: figure_png(f, dpi=dpi) for k, f in panels.items()}, names=names))
    display(footer)
