"""Numbers not to trust as they stand, said beside them in the summary and the report: a
model no better than chance, one below the pixel-similarity baseline, or one trained for too
few optimizer steps to mean much (the offline sample's one-epoch CNN: 6 steps), each with the
reason and what to do. Torch-free, for the summary."""

from __future__ import annotations

from ..data.raw import SAMPLE

# Fewer optimizer steps than this, and a trained model's accuracy says more about its
# initial weights than about what it learnt (real MNIST's 3s and 7s give the CNN 96).
MIN_STEPS = 50
# On the offline sample's 800 training 3s and 7s, settings that give the CNN 100 steps: it
# then scores 0.985 against the baseline's 0.915 (seed 42; docs/data.md).
SAMPLE_CNN = "-S train_cnn.epochs=4 -S train_cnn.batch_size=32"


def at_chance(balanced_accuracy: float, n_classes: int) -> bool:
    """No better than guessing one class (within a few points): a number not to trust."""
    return balanced_accuracy < 1 / n_classes + 0.05


def caveats(baseline: dict, trained: dict[str, tuple[dict, dict]], n_train: int,
            source: str) -> list[str]:
    """A line per trained model whose numbers need a word: `trained` maps each model to its
    scores and the settings it trained with; `baseline` is the L1 baseline's scores."""
    lines = []
    for name, (scores, trained_with) in trained.items():
        # as the stage counted them (metrics written before it did: not said)
        steps = scores.get("steps", MIN_STEPS)
        how = (f"{trained_with['epochs']} epoch(s) of {n_train} images in batches of "
               f"{trained_with['batch_size']}" + (f": {steps} optimizer steps"
                                                  if "steps" in scores else ""))
        why = []
        if at_chance(scores["balanced_accuracy"], len(scores["per_class"])):
            why.append(f"balanced accuracy {scores['balanced_accuracy']:.4f} is chance level "
                       f"for {len(scores['per_class'])} digits: it learnt nothing")
        elif scores["accuracy"] < baseline["accuracy"]:
            why.append(f"accuracy {scores['accuracy']:.4f} is below the pixel-similarity "
                       f"baseline's {baseline['accuracy']:.4f}")
        if steps < MIN_STEPS:
            why.append("too few optimizer steps to mean much")  # how many: in `how`
        if not why:
            continue
        if source == SAMPLE:
            todo = ("train on real MNIST (`MNIST_MIRRORS=/path/to/mnist make run`: 15 times "
                    "the images)" + (f", or on this sample `dvc exp run {SAMPLE_CNN}` (100 "
                                     f"steps)" if name == "cnn" else ""))
        elif steps < MIN_STEPS:
            todo = f"raise train_{name}.epochs or lower train_{name}.batch_size"
        else:
            todo = f"check train_{name}'s settings (docs/training.md)"
        lines.append(f"{name}: {'; '.join(why)} ({how}). What to do: {todo}.")
    return lines
