"""Why a model gives its answer, in the chapter's terms, for the draw-a-digit page and its
API (`?why=1`; own_digits/why.py draws it).

- Pixel similarity answers with the digit whose mean ("ideal") image is nearest: its why is
  those mean images and the distances (`similarity.py`).
- The other models score each digit; the answer is the highest score. Its why is how much
  each pixel of the drawing adds to the answer's score over the runner-up's (`margin`):
  integrated gradients, from a blank image to the drawing. For the linear model that is
  exactly weight × pixel, the chapter's `(x*weights).sum() + bias` taken apart pixel by
  pixel; for the MLP and the CNN, the same sum along a straight path from blank paper to the
  drawing, which adds up to the margin's change along it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Points on the path from blank paper to the drawing: enough that the attributions add up to
# the margin's change within a few percent for the CNN, few enough to answer while drawing.
STEPS = 8


def margin(logits: torch.Tensor, answer: int, runner_up: int) -> torch.Tensor:
    """Per row, how far the answer's score is above the runner-up's: for a model with one
    output (the book's 3/7 models, a sigmoid), its logit turned toward the answer (target 1
    is the logit's side); otherwise the difference of the two logits."""
    if logits.shape[1] == 1:
        return logits[:, 0] if answer == 1 else -logits[:, 0]
    return logits[:, answer] - logits[:, runner_up]


def runner_up(logits: torch.Tensor, answer: int) -> int:
    """The output class one image's answer is weighed against (logits 1×k): for one output,
    the sigmoid's other side; otherwise the second-highest score."""
    if logits.shape[1] == 1:
        return 1 - answer
    ranked = logits[0].argsort(descending=True).tolist()
    return next(c for c in ranked if c != answer)


@dataclass
class Attribution:
    parts: torch.Tensor  # per pixel (784), its part in the margin's change
    other: int           # the output class the answer is weighed against
    blank: float         # the margin for blank paper (all 0)
    drawing: float       # the margin for the drawing itself


def integrated_gradients(model: nn.Module, x: torch.Tensor, answer: int,
                         steps: int = STEPS) -> Attribution:
    """Per pixel of one flat image x (784), its part in the margin of the answer over the
    runner-up: the pixel times the margin's gradient averaged over `steps` images from blank
    to x (the midpoint rule). For a linear model it is (w_answer − w_other) × pixel, exactly;
    the parts add up to about drawing − blank. One forward pass, the path, blank paper and
    the drawing together (the model is in evaluation mode: each image on its own)."""
    model.eval()
    fractions = (torch.arange(steps, dtype=x.dtype) + 0.5) / steps
    images = torch.cat([fractions[:, None] * x[None], torch.zeros_like(x)[None], x[None]])
    images.requires_grad_()
    with torch.enable_grad():
        logits = model(images)
        other = runner_up(logits[-1:].detach(), answer)
        margins = margin(logits, answer, other)
        margins[:steps].sum().backward()
    margins = margins.detach()
    return Attribution(x * images.grad[:steps].mean(0), other, float(margins[-2]),
                       float(margins[-1]))


def weights_by_digit(model: nn.Module) -> torch.Tensor:
    """A linear model's weights as one 28×28 image per output (k×28×28)."""
    return model[0].weight.detach().view(-1, 28, 28)
