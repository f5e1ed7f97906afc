"""Single-process parts of the distributed helpers and the probe evaluator."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from memcallbacks import IndexedDataset
from memcallbacks._dist import first_occurrence
from memcallbacks._probe import (
    default_sample_loss_and_correct_fn,
    default_sample_loss_fn,
    evaluate_sample_losses,
    random_subset,
)


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
    assert correct.dtype == torch.bool and correct.shape == (2,)


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
    assert ia.tolist() == ib.tolist() and sorted(ia.tolist()) == ia.tolist() and len(a) == 10
    _, all_idx = random_subset(ds, 1000, seed=3)
    assert all_idx.tolist() == list(range(100))
