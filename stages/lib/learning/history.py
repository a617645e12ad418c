"""plots/<model>.tsv: a trained model's history, one row per epoch (train and valid loss,
valid accuracy), written by its training stage and read by the report."""

from __future__ import annotations

from pathlib import Path

from ..infra.errors import UserError
from ..infra.files import read_text

HISTORY_COLUMNS = ("epoch", "train_loss", "valid_loss", "valid_accuracy")


def history_tsv(history: list[dict]) -> str:
    rows = ["\t".join(HISTORY_COLUMNS)]
    for row in history:
        rows.append("\t".join(str(row["epoch"]) if col == "epoch" else f"{row[col]:.6f}"
                              for col in HISTORY_COLUMNS))
    return "\n".join(rows) + "\n"


def read_history(path: str | Path) -> list[dict]:
    """A history written by history_tsv, back as one dict per epoch."""
    try:
        lines = read_text(path).splitlines()
    except FileNotFoundError:
        raise UserError(f"{path} not found; run the training stage that writes it "
                        f"(`dvc repro`)") from None
    expected = f"expected columns {', '.join(HISTORY_COLUMNS)}"
    if not lines or tuple(lines[0].split("\t")) != HISTORY_COLUMNS:
        raise UserError(f"{path} is not a training history ({expected})")
    try:
        return [{col: (int(v) if col == "epoch" else float(v))
                 for col, v in zip(HISTORY_COLUMNS, line.split("\t"), strict=True)}
                for line in lines[1:]]
    except ValueError:
        raise UserError(f"{path} is not a training history ({expected}, one number in "
                        f"each)") from None
