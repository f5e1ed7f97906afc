"""A 2-process CPU fit with sharded parameters (FSDP2 ``fully_shard`` + ``ModelParallelStrategy``, gloo).

Usage: ``python sharded_fit.py MODEL OUT`` with MODEL

* ``mlp``: the cross-callback model of :mod:`helpers.every_monitor` (a classifier and a bigram LM),
  ``fully_shard`` on its classifier and on the whole module, every monitor of
  :func:`helpers.every_monitor.build_callbacks` and a probe-mode ``LossTrajectoryTracker`` attached,
  under a *subclass* of ``ModelParallelStrategy`` (a subclass used to be taken for DDP and hang);
* ``mlp-resume``: the same MLP fit stopped after epoch 0 (the strategy's distributed checkpoint,
  a folder of shards) and resumed from it in a second Trainer to epoch 1;
* ``gpt2``: a 2-layer GPT-2 built from a config (no download), ``fully_shard`` on each block and on
  the model, with a :class:`~memcallbacks.SequenceMemorisationMonitor` (uneven probe shards, probes
  shorter than the window, a ``fit_start`` reference) under ``ModelParallelStrategy`` itself.

``ModelParallelStrategy`` starts the second process by running this script again. Each rank writes
``OUT/ranks/rank<k>.npz`` (:class:`helpers.callbacks.RankDump`: what it logged and holds); rank 0
writes the gathered full weights to ``OUT/weights.pt`` and the run directory ``OUT/run``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the package helpers

import torch

torch.set_num_threads(1)

import pytorch_lightning as pl  # noqa: E402
from pytorch_lightning.strategies import ModelParallelStrategy  # noqa: E402
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402

from helpers import every_monitor as H  # noqa: E402
from helpers.sharded import GPT2LM, gpt2_data  # noqa: E402

EPOCHS = 2


class CustomModelParallel(ModelParallelStrategy):
    """A user's subclass (e.g. to change checkpointing): still sharded, whatever its name."""


class ShardedHardModel(H.HardModel):
    def configure_model(self) -> None:
        fully_shard(self.net)
        fully_shard(self)


class ShardedGPT2LM(GPT2LM):
    def configure_model(self) -> None:
        for block in self.model.transformer.h:
            fully_shard(block)
        fully_shard(self.model)


class FullWeights(pl.Callback):
    """At the end of fit, the full (gathered) state dict, saved by rank 0 (a collective: every rank calls it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(pl_module, options=options)
        if trainer.is_global_zero:
            torch.save(state, self.path)


def mlp_callbacks(run_dir: Path, data: H.Data) -> list[Any]:
    """Every monitor of ``build_callbacks``, and a probe-mode trajectory over 23 held-out samples (uneven shards)."""
    from torch.utils.data import Subset

    from memcallbacks import LossTrajectoryTracker

    probe = LossTrajectoryTracker(
        source="probe", probe_dataset=Subset(data.val, range(23)), name="probe", run_dir=run_dir
    )
    return [*H.build_callbacks(run_dir, data), probe]


def _trainer(out: Path, strategy: ModelParallelStrategy, callbacks: list[Any], **kwargs: Any) -> pl.Trainer:
    opts: dict[str, Any] = {
        "default_root_dir": str(out),
        "accelerator": "cpu",
        "devices": 2,
        "strategy": strategy,
        "max_epochs": EPOCHS,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "callbacks": callbacks,
    }
    return pl.Trainer(**{**opts, **kwargs})


def resume(out: Path) -> None:
    """Epoch 0, a distributed checkpoint, then a new Trainer resumed from it to the end."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    data = H.Data(n_train=41)
    loaders = (data.train_loader(batch_size=4, sampler=False), data.val_loader())
    ckpt = ModelCheckpoint(dirpath=str(out / "ckpt"), filename="{epoch}", save_top_k=-1)
    first = _trainer(
        out,
        CustomModelParallel(data_parallel_size=2, tensor_parallel_size=1),
        [*mlp_callbacks(out / "run", data), ckpt],
        max_epochs=1,
        enable_checkpointing=True,
    )
    first.fit(ShardedHardModel(lr=0.2), *loaders)
    pl.seed_everything(0)
    second = _trainer(
        out,
        CustomModelParallel(data_parallel_size=2, tensor_parallel_size=1),
        [*mlp_callbacks(out / "run", data), H.RankDump(out / "ranks"), FullWeights(out / "weights.pt")],
    )
    second.fit(ShardedHardModel(lr=0.2), *loaders, ckpt_path=str(out / "ckpt" / "epoch=0.ckpt"))


def main(model: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(0)  # the model's initial weights too
    if model == "mlp-resume":
        resume(out)
        return
    extra: list[Any] = [H.RankDump(out / "ranks"), FullWeights(out / "weights.pt")]
    if model == "mlp":
        data = H.Data(n_train=41)
        module: pl.LightningModule = ShardedHardModel(lr=0.2)
        callbacks = mlp_callbacks(out / "run", data)
        loaders: tuple[Any, ...] = (data.train_loader(batch_size=4, sampler=False), data.val_loader())
        strategy: ModelParallelStrategy = CustomModelParallel(data_parallel_size=2, tensor_parallel_size=1)
    else:
        from helpers.sharded import sequence_monitor

        train, members, nonmembers = gpt2_data()
        module = ShardedGPT2LM(lr=1e-2)
        callbacks = [sequence_monitor(out / "run", members, nonmembers)]
        loaders = (train,)
        strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    _trainer(out, strategy, [*callbacks, *extra]).fit(module, *loaders)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
