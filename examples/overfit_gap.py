"""Watch a small model overfit: the train/held-out loss gap and membership-inference AUC rise.

An MLP is trained on only 100 of scikit-learn's bundled 8x8 digits (no download) for 60
epochs; :class:`memcallbacks.MembershipInferenceMonitor` probes the 100 training digits
(members) and 300 held-out digits (non-members) after every epoch and prints the loss gap and
the loss-threshold attack's AUC (Yeom et al. 2018). Training loss goes to ~0 while held-out loss
does not, so the attacker separates members from non-members better and better.

Run::

    python examples/overfit_gap.py              # 60 epochs, about 10 s on one CPU core
    python examples/overfit_gap.py --epochs 5 --weight-decay 0.05 --dropout 0.5   # regularised

``main(argv)`` returns the monitor's history (one dict per epoch), so tests can import it.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from memcallbacks import MembershipInferenceMonitor


class DigitsMLP(pl.LightningModule):
    """64 -> hidden -> 10 MLP with optional dropout and weight decay."""

    def __init__(
        self, hidden: int = 256, dropout: float = 0.0, lr: float = 1e-3, weight_decay: float = 0.0
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )


def digits_split(train_size: int, held_out: int, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """A seeded split of sklearn's digits into a small training set and a held-out set."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
    tr, ho = order[:train_size], order[train_size : train_size + held_out]
    return TensorDataset(x[tr], y[tr]), TensorDataset(x[ho], y[ho])


class _PrintEpoch(pl.Callback):
    def __init__(self, monitor: MembershipInferenceMonitor, quiet: bool) -> None:
        self.monitor, self.quiet = monitor, quiet

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.quiet or not self.monitor.history:
            return
        row = self.monitor.history[-1]
        print(
            f"epoch {int(row['epoch']):3d}  member loss {row['mem/gap/member_loss']:.3f}  "
            f"held-out loss {row['mem/gap/nonmember_loss']:.3f}  gap {row['mem/gap/loss']:+.3f}  "
            f"MIA AUC {row['mem/mia/auc']:.3f}  advantage {row['mem/mia/advantage']:.3f}"
        )


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    """Train, print the gap and AUC per epoch, and return the monitor's history."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--train-size", type=int, default=100)
    p.add_argument("--held-out", type=int, default=300)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="run directory (default: a temporary folder)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest for this tiny MLP)"
    )
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    pl.seed_everything(args.seed, verbose=False)
    train, held_out = digits_split(args.train_size, args.held_out, args.seed)
    monitor = MembershipInferenceMonitor(members=train, nonmembers=held_out)
    out = args.out or tempfile.mkdtemp(prefix="overfit_gap_")
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        default_root_dir=out,
        logger=pl.loggers.CSVLogger(out, name="csv"),
        callbacks=[monitor, _PrintEpoch(monitor, args.quiet)],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    model = DigitsMLP(hidden=args.hidden, dropout=args.dropout, lr=args.lr, weight_decay=args.weight_decay)
    trainer.fit(model, DataLoader(train, batch_size=args.batch_size, shuffle=True))
    if not args.quiet:
        print(f"run directory: {monitor.run_dir}")
    return monitor.history


if __name__ == "__main__":
    main()
