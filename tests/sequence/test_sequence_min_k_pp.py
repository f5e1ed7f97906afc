"""Min-K%++ (Zhang et al., ICLR 2025): hand-worked values and an independent computation on a tiny GPT-2."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.training import trainer
from memcallbacks import CharTokenizer, SequenceMemorisationMonitor
from memcallbacks.demos.toy import make_payment_corpus
from memcallbacks.metrics import membership_inference
from memcallbacks.metrics.sequence import min_k_plus_plus, min_k_pp_token_scores, teacher_forced_scores
from memcallbacks.utilities.fileio import load_npz

LN2 = math.log(2.0)


def test_hand_worked_three_token_vocabulary() -> None:
    # p = (1/2, 1/4, 1/4): log p = (-ln2, -2 ln2, -2 ln2), mu = -1.5 ln2, sigma = 0.5 ln2
    half = [math.log(0.5), math.log(0.25), math.log(0.25)]
    # p = (0.8, 0.1, 0.1): mu = 0.8 ln0.8 + 0.2 ln0.1, sigma from the definition by hand below
    skew = [math.log(0.8), math.log(0.1), math.log(0.1)]
    mu = 0.8 * math.log(0.8) + 0.2 * math.log(0.1)
    sigma = math.sqrt(0.8 * (math.log(0.8) - mu) ** 2 + 0.2 * (math.log(0.1) - mu) ** 2)
    logits = torch.tensor([[half, half, skew, skew]], dtype=torch.float64)
    z = min_k_pp_token_scores(logits, torch.tensor([[0, 1, 0, 2]]))
    expected = [1.0, -1.0, (math.log(0.8) - mu) / sigma, (math.log(0.1) - mu) / sigma]
    np.testing.assert_allclose(z[0].numpy(), expected, rtol=1e-12)
    assert expected[3] == pytest.approx(-2.0)  # (0.8, 0.1, 0.1) has the same two-point shape: z = -2 and +0.5
    assert expected[2] == pytest.approx(0.5)
    targets = [[0, 1, 0, 2]]
    # k = 0.5 of n = 4: the mean of the two lowest (-2, -1)
    assert float(min_k_plus_plus(logits, targets, k=0.5)[0]) == pytest.approx(-1.5, rel=1e-12)
    assert float(min_k_plus_plus(logits, targets, k=1.0)[0]) == pytest.approx(
        (1 - 1 + 0.5 - 2) / 4, rel=1e-12
    )
    assert float(min_k_plus_plus(logits, targets, k=0.01)[0]) == pytest.approx(-2.0, rel=1e-12)  # at least 1
    # a mask drops tokens before the lowest are chosen
    masked = min_k_plus_plus(logits, targets, [[True, True, True, False]], k=0.5)
    assert float(masked[0]) == pytest.approx(-1.0, rel=1e-12)  # int(0.5 * 3) = 1: the lowest of (1, -1, 0.5)
    # float32 logits give the same to float32 precision, on the default path (numpy in, numpy out)
    out32 = min_k_plus_plus(logits.float().numpy(), targets, k=0.5)
    assert isinstance(out32, np.ndarray)
    assert out32[0] == pytest.approx(-1.5, rel=1e-5)


def test_zero_sigma_positions_are_left_out_never_inf() -> None:
    inf = math.inf
    one_hot = [0.0, -inf, -inf]  # sigma = 0: a one-hot distribution
    uniform = [2.0, 2.0, 2.0]  # sigma = 0: every log p equal
    half = [math.log(0.5), math.log(0.25), math.log(0.25)]
    for dtype in (torch.float32, torch.float64):
        logits = torch.tensor(
            [[half, one_hot, uniform, half], [one_hot, uniform, one_hot, uniform]], dtype=dtype
        )
        targets = torch.tensor([[0, 0, 1, 1], [1, 2, 0, 0]])
        z = min_k_pp_token_scores(logits, targets)
        assert torch.isnan(z[:, 1:3]).all()
        assert torch.isnan(z[1]).all()
        assert not torch.isinf(z).any()
        out = min_k_plus_plus(logits, targets, k=1.0)
        assert out[0].item() == pytest.approx(0.0, abs=1e-6)  # (+1, -1): n = 2, the sigma = 0 tokens left out
        assert math.isnan(out[1].item())  # nothing defined: NaN, not inf
    # the same through the monitor's hot path
    tf = teacher_forced_scores(
        torch.tensor([[half, half, uniform, half]]),
        torch.tensor([[2, 0, 1, 2]]),
        torch.tensor([4]),
        prefix_len=1,
        min_k=1.0,
        sampling=[],
    )
    # targets 0 (z = +1) and 1 (z = -1); the uniform position is left out
    assert tf.min_k_pp[0].item() == pytest.approx(0.0, abs=1e-6)


def test_bad_input() -> None:
    logits = np.zeros((1, 3, 4))
    with pytest.raises(ValueError, match="`k`"):
        min_k_plus_plus(logits, [[0, 1, 2]], k=0.0)
    with pytest.raises(ValueError, match="`targets`"):
        min_k_plus_plus(logits, [[0, 1]], k=0.5)
    with pytest.raises(ValueError, match="vocabulary of 4"):
        min_k_plus_plus(logits, [[0, 1, 4]], k=0.5)
    with pytest.raises(ValueError, match="`mask`"):
        min_k_plus_plus(logits, [[0, 1, 2]], [[True, False]], k=0.5)


# -- an independent plain-torch computation on a tiny GPT-2 ------------------------------------
transformers = pytest.importorskip("transformers")
TOK = CharTokenizer()
TEXTS = make_payment_corpus(32, seed=0)


def _reference_min_k_pp(model: torch.nn.Module, ids: torch.Tensor, k: float) -> float:
    """Min-K%++ from the definition: softmax, explicit loops over positions and the vocabulary, float64."""
    logits = model(input_ids=ids[None]).logits[0].double()
    scores = []
    for t in range(ids.numel() - 1):
        p = torch.softmax(logits[t], dim=-1).tolist()
        mu = sum(pz * math.log(pz) for pz in p if pz > 0)
        sigma = math.sqrt(sum(pz * (math.log(pz) - mu) ** 2 for pz in p if pz > 0))
        scores.append((math.log(p[int(ids[t + 1])]) - mu) / sigma)
    lowest = sorted(scores)[: max(1, int(k * len(scores)))]
    return sum(lowest) / len(lowest)


def _gpt2() -> torch.nn.Module:
    cfg = transformers.GPT2Config(
        vocab_size=TOK.vocab_size,
        n_positions=32,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=1,
        eos_token_id=1,
    )
    return transformers.GPT2LMHeadModel(cfg)


def test_monitor_logs_min_k_pp_of_an_independent_computation(tmp_path: Path) -> None:
    import pytorch_lightning as pl

    class LM(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = _gpt2()

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            return self.model(input_ids=batch, labels=batch).loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=3e-3)

    torch.manual_seed(0)
    seqs = [torch.tensor(TOK.encode(t)[:16]) for t in TEXTS]
    members, nonmembers = seqs[:8], seqs[8:16]
    monitor = SequenceMemorisationMonitor(
        members, nonmembers, prefix_len=8, suffix_len=8, num_probes=8, min_k=0.3, batch_size=3
    )
    loader = torch.utils.data.DataLoader(torch.stack(members * 8), batch_size=8, shuffle=True)
    model = LM()
    trainer(tmp_path, max_epochs=2, callbacks=[monitor]).fit(model, loader)
    model.eval()
    with torch.no_grad():
        ref_m = np.array([_reference_min_k_pp(model.model, members[i], 0.3) for i in monitor.member_indices])
        ref_n = np.array(
            [_reference_min_k_pp(model.model, nonmembers[i], 0.3) for i in monitor.nonmember_indices]
        )
    monitor.flush()
    saved = load_npz(monitor.run_dir / "sequences.npz")
    np.testing.assert_allclose(saved["member_min_k_pp"][-1], ref_m, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(saved["nonmember_min_k_pp"][-1], ref_n, rtol=1e-4, atol=1e-5)
    last = monitor.history[-1]
    auc = membership_inference(-ref_m, -ref_n, fprs=()).auc
    assert last["mem/mia_lm/auc/min_k_pp"] == pytest.approx(auc)
    assert "mem/mia_lm/tpr@1%fpr/min_k_pp" in last
    assert len(saved["member_min_k_pp"]) == 2  # one row per evaluation, like min_k


def test_a_checkpoint_from_before_min_k_pp_loads_with_nan() -> None:
    from memcallbacks.lm.windows import WindowScores

    monitor = SequenceMemorisationMonitor(prefix_len=2, suffix_len=2)
    row = torch.tensor([0.5, 0.7], dtype=torch.float64)
    monitor._epochs, monitor._steps = [0], [3]
    monitor._results = [
        WindowScores(
            loss=row,
            min_k=-row,
            min_k_pp=-2 * row,
            exact=row,
            token_match=row,
            log_q=row[:, None],
            generated=torch.zeros((2, 0), dtype=torch.long),
        )
    ]
    state = monitor.state_dict()
    del state["results_min_k_pp"]  # written before the field existed
    other = SequenceMemorisationMonitor(prefix_len=2, suffix_len=2)
    other.load_state_dict(state)
    assert len(other._results) == 1
    np.testing.assert_array_equal(other._results[0].loss.numpy(), row.numpy())
    assert torch.isnan(other._results[0].min_k_pp).all()
