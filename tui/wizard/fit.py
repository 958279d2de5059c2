"""Fitting a table into the terminal's width: column widths that add up to what is there, texts cut with "…".

A DataTable wider than its screen scrolls sideways, which nobody notices at 80 columns: the last column (where a
value came from) is simply cut. These helpers share the width out instead (no textual import: easy to test); the
screen shows the full row of the highlighted line elsewhere, so nothing cut is out of reach.
"""
from __future__ import annotations

ELLIPSIS = "…"


def clip(text: str, width: int) -> str:
    """``text`` in at most ``width`` cells, ending in "…" when it was cut."""
    if len(text) <= width:
        return text
    return text[:max(width - 1, 0)] + ELLIPSIS if width > 0 else ""


def column_widths(rows: list[tuple[str, ...]], headers: tuple[str, ...], width: int, padding: int = 2,
                  shrink: tuple[int, ...] | None = None) -> list[int]:
    """Content widths for ``headers`` so that the columns plus their ``padding`` each fit in ``width``.

    Every column first gets its natural width (its longest cell or header). When that is too wide, the columns
    in ``shrink`` (default: all but the first, last first) give up cells, none below its header's width, so the
    key column stays whole and the long explanations are what gets cut."""
    natural = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    widths = list(natural)
    room = width - padding * len(headers)
    order = list(shrink if shrink is not None else range(len(headers) - 1, 0, -1))
    excess = sum(widths) - room
    # the longest shrinkable column gives first, until all are even, so one column is not emptied for another
    while excess > 0:
        candidates = [i for i in order if widths[i] > len(headers[i])]
        if not candidates:
            break
        i = max(candidates, key=lambda c: (widths[c], -order.index(c)))
        widths[i] -= 1
        excess -= 1
    return widths
