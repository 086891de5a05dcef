"""What every inference backend offers the pipeline."""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np


class InferenceResult(NamedTuple):
    anomaly_map: np.ndarray  # float32 N x H x W
    score: np.ndarray  # float32 N


class EngineError(RuntimeError):
    """The engine could not be loaded or could not run a batch."""


class EngineUnavailable(EngineError):
    """The chosen runtime or the GPU it needs is not on this machine (a setup problem, not a
    model problem): commands exit 2 on it, and `auto` never picks such a backend."""


class Engine(abc.ABC):
    """Runs the exported graph: uint8 N x H x W x 3 (RGB, preprocessed) -> maps and scores."""

    name: str
    input_hw: tuple[int, int]

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> InferenceResult: ...

    def check_batch(self, batch: np.ndarray) -> None:
        h, w = self.input_hw
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (h, w, 3):
            raise ValueError(
                f"engine input must be uint8 N x {h} x {w} x 3, got {batch.dtype} {batch.shape}"
            )

    def warmup(self, runs: int = 3) -> None:
        """Run a few batches so first-part latency is not spent on lazy initialisation."""
        h, w = self.input_hw
        for _ in range(runs):
            self.infer(np.zeros((1, h, w, 3), np.uint8))

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


def infer_batches(
    engine: Engine, batches: Iterable[np.ndarray], total: int | None = None
) -> InferenceResult:
    """Every batch through `engine`, concatenated: the one batch-scoring loop of the offline
    paths (evaluation, calibration, verification). With `total` (images to come) the maps are
    written into one array allocated at the first batch, not held twice by a concatenation
    (a test set of 1000 maps of 256 x 256 is 262 MB). No batch: empty results."""
    maps: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    into: np.ndarray | None = None
    n = 0
    for x in batches:
        r = engine.infer(x)
        if total is not None and into is None:
            into = np.empty((total, *r.anomaly_map.shape[1:]), np.float32)
        if into is not None:
            into[n : n + len(r.score)] = r.anomaly_map
        else:
            maps.append(r.anomaly_map)
        scores.append(r.score)
        n += len(r.score)
    if not scores:
        return InferenceResult(np.empty((0, 1, 1), np.float32), np.empty(0, np.float32))
    amaps = into[:n] if into is not None else np.concatenate(maps)
    return InferenceResult(amaps, np.concatenate(scores))
