"""A scripted monitor for the step and validation schedules (importable by ``ddp_spawn`` workers)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from memcallbacks.callbacks._base import MemorisationCallback


class StepScore(MemorisationCallback):
    """Logs ``key = trainer.global_step (+ rank_offset * rank)`` at each evaluation.

    It keeps the weights it measured, by global step, in :attr:`weights_at`.
    """

    subdir = "step_score"

    def __init__(self, key: str = "mem/test/step", *, rank_offset: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.key, self.rank_offset = key, rank_offset
        self.weights_at: dict[int, dict[str, torch.Tensor]] = {}

    def _state_key_args(self) -> dict[str, Any]:
        return {"key": self.key}  # two StepScore on different keys may share a Trainer

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
        self.weights_at[trainer.global_step] = {
            k: v.detach().clone() for k, v in pl_module.state_dict().items()
        }
        return float(trainer.global_step) + self.rank_offset * trainer.global_rank

    def metrics(self, result: float) -> dict[str, float]:
        return {self.key: result}
