"""Tables as Markdown (report.md, the seed study) and as aligned text (the summary)."""

from __future__ import annotations


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(header: list[str], rows: list[list]) -> str:
    return "\n".join([_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)])


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Aligned columns for a terminal: the first to the left, the numbers to the right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [[cell.ljust(w) if i == 0 else cell.rjust(w)
              for i, (cell, w) in enumerate(zip(row, widths))] for row in [header, *rows]]
    return "\n".join("  ".join(line).rstrip() for line in lines)
