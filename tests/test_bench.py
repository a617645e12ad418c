"""The benchmark's training comparison on tiny data: the chapter's DataLoader loop and our
Learner must end at the same weights, or the timings compare different work."""

from __future__ import annotations

import torch

from bench.bench import time_training


def test_our_learner_and_the_books_loop_reach_identical_weights():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(600, 784, generator=generator)
    y = (x[:, :392].sum(1) > x[:, 392:].sum(1)).long()
    tensors = ((x[:500], y[:500]), (x[500:], y[500:]))
    for config, book_init in (({"kind": "linear", "n_outputs": 1}, True),
                              ({"kind": "mlp", "n_outputs": 1, "hidden": [8]}, False)):
        row = time_training("m", config, book_init, lr=0.5, epochs=2, tensors=tensors,
                            batch_size=64)
        assert row["max_weight_diff"] == 0.0 and row["same_final_weights"]
        assert row["ours_s_per_epoch"] > 0 and row["book_s_per_epoch"] > 0
