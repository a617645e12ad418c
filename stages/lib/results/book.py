"""The book's published figures (docs/book.md) and the settings they belong to,
so the report can put the book's number beside ours only where the run matches the book."""

from __future__ import annotations

# The data every figure below is on: MNIST_SAMPLE = the 3s and 7s, MNIST test set as valid.
BOOK_DATA = {"digits": [3, 7], "split": "official"}
BOOK_SOURCES = ("mnist", "mnist_sample")
_BOOK_TRAINING = {"batch_size": 256, "shuffle": False, "loss": "mnist"}

# The book's CNN: resnet18 from scratch, fit_one_cycle, no augmentation. A run recorded
# before one of these params existed did what its default does.
BOOK_CNN = {"arch": "resnet18", "weights": "none", "fit": "one_cycle", "augment": False}

# (model, the settings that must match, the book's settings that may differ: named beside
# its figure where ours differ, the book's figure: metric key -> value)
BOOK_FIGURES = [
    ("baseline_l1", {}, {}, {"balanced_accuracy": 0.9511,
                             "per_class": {"3": 0.9168, "7": 0.9854}}),
    ("linear", {"init": "book", "lr": 1.0, "epochs": 21, **_BOOK_TRAINING}, {},
     {"accuracy": 0.9696}),
    ("linear", {"init": "torch", "lr": 1.0, "epochs": 20, **_BOOK_TRAINING}, {},
     {"accuracy": 0.9785}),
    ("mlp", {"hidden": [30], "lr": 0.1, "epochs": 40, **_BOOK_TRAINING}, {},
     {"accuracy": 0.9828}),
    # The chapter's last step, fit_one_cycle(1, 0.1) in batches of 64 (the DataLoader's
    # default) with fastai's weight decay: one epoch is what makes it that step; its peak lr
    # and batch size are ours to tune (docs/cnn.md), so they are named, not required.
    ("cnn", {"epochs": 1, **BOOK_CNN}, {"lr": 0.1, "batch_size": 64, "wd": 0.01},
     {"accuracy": 0.997}),
]


def is_book_data(meta: dict) -> bool:
    return (meta["source"] in BOOK_SOURCES and meta["digits"] == BOOK_DATA["digits"]
            and meta["split"] == BOOK_DATA["split"])


def figure_text(figure: dict | None, per_class: bool = True) -> str:
    """The book's figure as a table cell: "0.9696", "0.9970 (book: lr 0.1, batch_size 64)"
    where its settings differ from ours, or for the baseline "0.9511 balanced" and its
    per-class figures; "—" where the book has none."""
    if figure is None:
        return "—"
    if "accuracy" in figure:
        differ = ", ".join(f"{k} {v}" for k, v in figure.get("book_settings", {}).items())
        return f"{figure['accuracy']:.4f}" + (f" (book: {differ})" if differ else "")
    text = f"{figure['balanced_accuracy']:.4f} balanced"
    if not per_class:
        return text
    return f"{text} ({', '.join(f'{d}: {v:.4f}' for d, v in figure['per_class'].items())})"


def book_figure(model: str, settings: dict, meta: dict) -> dict | None:
    """The book's figure for `model` trained with `settings` on `meta`'s data, if it has one,
    with under "book_settings" those of the book's settings that ours differ from."""
    if not is_book_data(meta):
        return None
    for name, required, named, figure in BOOK_FIGURES:
        if name == model and all(settings.get(k, BOOK_CNN.get(k)) == v
                                 for k, v in required.items()):
            differ = {k: v for k, v in named.items() if settings.get(k) != v}
            return {**figure, "book_settings": differ} if differ else figure
    return None


def cnn_recipe(settings: dict, scores: dict) -> str | None:
    """A line saying how the CNN was trained, where it was not the book's way (resnet18 from
    scratch, fit_one_cycle, no augmentation): its architecture, what it started from (from
    scratch said in so many words), its fit, augmentation, and its error rate, as fastai
    reports it. `settings`: train_cnn's params as run; `scores`: metrics/cnn.json."""
    if all(settings.get(k, v) == v for k, v in BOOK_CNN.items()):
        return None
    start = (f"from the weights in {scores['pretrained']}" if scores.get("pretrained")
             else "from scratch (train_cnn.weights: none, no pretrained weights)")
    fit = (f"fastai's fine_tune (1 epoch with the body frozen, then {settings['epochs']})"
           if settings.get("fit") == "fine_tune" else
           f"fit_one_cycle ({settings['epochs']} epoch(s))")
    augment = "with aug_transforms()" if settings.get("augment") else "no augmentation"
    return (f"cnn: {settings.get('arch', BOOK_CNN['arch'])} {start}, {fit}, {augment}: error "
            f"rate {1 - scores['accuracy']:.4f}.")
