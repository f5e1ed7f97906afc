"""The distributed helpers and the probe evaluator (single process, and one real 2-process DDP run)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from memcallbacks import IndexedDataset
from memcallbacks.callbacks.probes import (
    default_sample_loss_and_correct_fn,
    default_sample_loss_fn,
    evaluate_sample_losses,
    evaluate_sharded,
    random_subset,
    shard_positions,
)
from memcallbacks.utilities.distributed import columns_by_index, first_occurrence


def test_first_occurrence_keeps_each_index_once_in_order():
    idx = torch.tensor([4, 2, 4, 7, 2, 9, 9])
    pos = first_occurrence(idx)
    assert pos.tolist() == [0, 1, 3, 5]
    assert idx[pos].tolist() == [4, 2, 7, 9]


def test_default_loss_is_cross_entropy_not_true_class_logit():
    net = torch.nn.Linear(3, 4)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])
    expected = F.cross_entropy(net(x), y, reduction="none")
    torch.testing.assert_close(default_sample_loss_fn(net, (x, y)), expected)


def test_default_loss_sequence_mean_over_positions_ignoring_padding():
    logits = torch.randn(2, 3, 5)
    y = torch.tensor([[1, 2, -100], [0, 4, 3]])

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits

    loss, correct = default_sample_loss_and_correct_fn(Fixed(), (torch.zeros(2, 3), y))
    tok0 = F.cross_entropy(logits[0, :2], y[0, :2], reduction="none").mean()
    tok1 = F.cross_entropy(logits[1], y[1], reduction="none").mean()
    torch.testing.assert_close(loss, torch.stack([tok0, tok1]))
    assert correct.dtype == torch.bool
    assert correct.shape == (2,)


def test_evaluate_restores_train_mode_and_matches_manual_forward():
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
    ds = TensorDataset(torch.randn(10, 3), torch.randint(0, 2, (10,)))
    net.train()
    losses, correct = evaluate_sample_losses(net, IndexedDataset(ds), batch_size=4)
    assert net.training
    net.eval()
    with torch.no_grad():
        manual = F.cross_entropy(net(ds.tensors[0]), ds.tensors[1], reduction="none")
    torch.testing.assert_close(losses, manual)
    assert correct is None


def test_scalar_loss_fn_is_rejected_with_the_fix():
    ds = TensorDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
    net = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="reduction='none'"):
        evaluate_sample_losses(net, ds, lambda m, b: F.cross_entropy(m(b[0]), b[1]))


def test_random_subset_is_seeded_and_sorted():
    ds = TensorDataset(torch.arange(100))
    a, ia = random_subset(ds, 10, seed=3)
    b, ib = random_subset(ds, 10, seed=3)
    assert ia.tolist() == ib.tolist()
    assert sorted(ia.tolist()) == ia.tolist()
    assert len(a) == 10
    _, all_idx = random_subset(ds, 1000, seed=3)
    assert all_idx.tolist() == list(range(100))


@pytest.mark.parametrize(("n", "world"), [(1, 2), (5, 2), (91, 2), (10, 3), (2, 4), (12, 4)])
def test_shards_are_contiguous_equal_and_cover_every_position(n: int, world: int) -> None:
    shards = [shard_positions(n, world, r) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # every rank runs as many batches
    flat = np.concatenate(shards)
    assert sorted(set(flat.tolist())) == list(range(n))
    assert (np.diff(flat) >= 0).all()  # in order
    assert (flat[n:] == n - 1).all()  # padding repeats the last
    assert shard_positions(0, 2, 1).size == 0


@pytest.mark.parametrize(("n", "world"), [(7, 2), (10, 3), (3, 4)])
def test_gathered_shards_rebuild_the_vector_in_dataset_order(n: int, world: int) -> None:
    # what evaluate_sharded does after the all-gather, with each rank's rows simulated
    truth = torch.arange(n, dtype=torch.float64) * 1.5 + 2.0
    rows = [
        torch.stack([torch.as_tensor(p, dtype=torch.float64), truth[torch.as_tensor(p)]], dim=1)
        for p in (shard_positions(n, world, r) for r in range(world))
    ]
    gathered = torch.cat(rows)
    cols, present = columns_by_index(gathered[:, 0].long(), gathered[:, 1:], size=n)
    torch.testing.assert_close(cols[:, 0], truth)
    assert present.all()


def test_columns_by_index_keeps_first_record_and_fills_the_rest() -> None:
    index = torch.tensor([3, 1, 3, 0])
    values = torch.tensor([[1.0, 10.0], [2.0, 20.0], [9.0, 90.0], [4.0, 40.0]])
    cols, present = columns_by_index(index, values, size=5, fill=-1.0)
    assert cols.tolist() == [[4.0, 40.0], [2.0, 20.0], [-1.0, -1.0], [1.0, 10.0], [-1.0, -1.0]]
    assert present.tolist() == [True, True, False, True, False]
    with pytest.raises(ValueError, match=r"sample indices must lie in \[0, 5\)"):
        columns_by_index(torch.tensor([5]), torch.tensor([1.0]), size=5)
    with pytest.raises(ValueError, match="rows"):
        columns_by_index(torch.tensor([0, 1]), torch.tensor([1.0]), size=5)


def test_evaluate_sharded_on_one_process_is_the_plain_evaluation() -> None:
    net = torch.nn.Linear(3, 2)
    ds = TensorDataset(torch.randn(9, 3), torch.randint(0, 2, (9,)))
    a, ca = evaluate_sharded(None, net, ds, default_sample_loss_and_correct_fn, batch_size=4)
    b, cb = evaluate_sample_losses(net, ds, default_sample_loss_and_correct_fn, batch_size=4)
    torch.testing.assert_close(a, b)
    assert ca is not None
    assert cb is not None
    assert ca.tolist() == cb.tolist()


def test_probe_evaluation_switches_autocast_off() -> None:
    # a probe evaluated inside an active bf16 autocast region gives the float32 numbers
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 5))
    ds = TensorDataset(torch.randn(32, 16), torch.randint(0, 5, (32,)))
    float32, _ = evaluate_sample_losses(net, ds, batch_size=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast, _ = evaluate_sample_losses(net, ds, batch_size=8)
        bf16 = F.cross_entropy(net(ds.tensors[0]).float(), ds.tensors[1], reduction="none").detach()
    torch.testing.assert_close(under_autocast, float32, rtol=0, atol=0)
    assert not torch.allclose(bf16, float32, rtol=0, atol=1e-6)  # autocast would have changed them


_DDP_SCRIPT = """
import sys
import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from memcallbacks.callbacks.probes import default_sample_loss_and_correct_fn, evaluate_sample_losses, evaluate_sharded


class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Probe(pl.Callback):
    def __init__(self, ds, out):
        self.ds, self.out = ds, out

    def on_train_end(self, trainer, pl_module):
        loss, correct = evaluate_sharded(trainer, pl_module, self.ds, default_sample_loss_and_correct_fn, batch_size=3)
        plain, plain_correct = evaluate_sample_losses(pl_module, self.ds, default_sample_loss_and_correct_fn)
        np.savez(f"{self.out}/rank{trainer.global_rank}.npz", loss=loss.numpy(), correct=correct.numpy(),
                 plain=plain.numpy(), plain_correct=plain_correct.numpy())


if __name__ == "__main__":
    out = sys.argv[1]
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(11, 4, generator=g), torch.randint(0, 3, (11,), generator=g))
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[Probe(ds, out)])
    trainer.fit(Net(), DataLoader(ds, batch_size=4))
"""


@pytest.mark.ddp
@pytest.mark.slow
def test_evaluate_sharded_under_real_ddp_gives_every_rank_the_full_vectors(tmp_path: Path) -> None:
    script = tmp_path / "sharded.py"
    script.write_text(_DDP_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    for r in ranks:  # 11 samples, shards of 6 (rank 1 padded): the padding is gone, order kept
        assert r["loss"].shape == (11,)
        assert r["correct"].dtype == bool
        np.testing.assert_allclose(r["loss"], r["plain"], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(r["correct"], r["plain_correct"])
    np.testing.assert_array_equal(ranks[0]["loss"], ranks[1]["loss"])
