"""The training loop's rules: early stopping counted from its start epoch, per-image noise."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from inspectd.models.ae import ConvAutoencoder  # noqa: E402
from inspectd.train.families import reconstruction_objective  # noqa: E402
from inspectd.train.loop import TrainSettings, add_noise, train_model  # noqa: E402


def test_patience_counts_from_the_early_stop_start() -> None:
    """lr 0: the validation loss never improves after epoch 0. With early stopping from epoch 5
    and patience 3 the run may stop at epoch 4 + 3 = 7 (the paper's 800 / 300 stops at 1100
    at the earliest), not at epoch 5 because epoch 0 was long ago."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 128, 128, 3), dtype=np.uint8)
    settings = TrainSettings(epochs=40, batch_size=2, lr=0.0, early_stop_start=5, patience=3)
    result = train_model(
        ConvAutoencoder(latent_dim=8),
        images[:4],
        images[4:],
        settings,
        reconstruction_objective,
        progress=False,
    )
    assert (result.best_epoch, result.stopped, result.epochs_run) == (0, "early stop", 8)


def test_noise_sigma_is_drawn_per_image_up_to_the_maximum() -> None:
    x = torch.zeros(400, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    per_image = add_noise(x, 0.2, "uniform", gen).flatten(1).std(1)
    assert per_image.max() <= 0.21 and per_image.min() < 0.02
    assert abs(float(per_image.mean()) - 0.1) < 0.01  # U[0, 0.2] has mean 0.1
    fixed = add_noise(x, 0.2, "fixed", gen).flatten(1).std(1)
    assert torch.allclose(fixed, torch.full_like(fixed, 0.2), atol=0.01)
    assert add_noise(x, 0.0, "uniform", gen) is x
    with pytest.raises(ValueError, match="uniform"):
        add_noise(x, 0.1, "gaussian", gen)
    assert TrainSettings().noise == "uniform"
