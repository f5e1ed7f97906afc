"""SequenceMemorisationMonitor in real Trainer runs on tiny language models."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint

from helpers.training import trainer
from memcallbacks import CharTokenizer, LeakageEarlyStopping, SequenceMemorisationMonitor
from memcallbacks.demos.toy import CharLSTMLM, TokenDataset, lm_loader, make_payment_corpus
from memcallbacks.lm.windows import LanguageModel, WindowScores, pad_windows, score_windows
from memcallbacks.metrics import membership_inference, min_k_prob
from memcallbacks.rundir import RunDirectory
from memcallbacks.utilities.fileio import load_json, load_npz

TOK = CharTokenizer()
TEXTS = make_payment_corpus(48, seed=0)
TRAIN, HELD = TEXTS[:16], TEXTS[16:32]


def _lstm() -> CharLSTMLM:
    return CharLSTMLM(TOK.vocab_size, embedding_dim=16, hidden_size=128, lr=2e-2)


def _monitor(**kwargs: Any) -> SequenceMemorisationMonitor:
    opts: dict[str, Any] = dict(prefix_len=8, suffix_len=8, batch_size=32, tokenizer=TOK)
    opts.update(kwargs)
    return SequenceMemorisationMonitor(TokenDataset(TRAIN, TOK), TokenDataset(HELD, TOK), **opts)


def _scores(rows: Any) -> WindowScores:
    """A hand-written table ``[loss, min_k, exact, token_match, log q...]`` as per-probe results."""
    r = torch.as_tensor(np.asarray(rows, dtype=np.float64))
    return WindowScores(
        loss=r[:, 0],
        min_k=r[:, 1],
        min_k_pp=r[:, 1],  # the hand-written tables have no column of their own: Min-K% again
        exact=r[:, 2],
        token_match=r[:, 3],
        log_q=r[:, 4:],
        generated=torch.zeros((r.shape[0], 0), dtype=torch.long),
    )


def _assert_same(a: WindowScores, b: WindowScores, **tol: Any) -> None:
    for name, value in a.fields().items():
        np.testing.assert_allclose(
            value.numpy(), b.fields()[name].numpy(), equal_nan=True, err_msg=name, **tol
        )


def _csv_rows(t: pl.Trainer) -> list[dict[str, str]]:
    path = Path(t.logger.log_dir) / "metrics.csv"  # type: ignore[union-attr]
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_training_on_repeated_sequences_raises_the_extractable_rate(tmp_path: Path) -> None:
    torch.manual_seed(0)
    monitor = _monitor(n_tries=(1, 10, 100))
    t = trainer(tmp_path, max_epochs=3, callbacks=[monitor])
    t.fit(_lstm(), lm_loader(TRAIN * 30, TOK, batch_size=32))
    first, last = monitor.history[0], monitor.history[-1]
    assert first["mem/extract/exact_rate"] <= 0.0625  # at most 1 of 16 before memorising
    assert last["mem/extract/exact_rate"] >= 0.3
    assert last["mem/extract/token_match"] > first["mem/extract/token_match"] + 0.2
    assert last["mem/extract/exact_rate_nonmember"] <= 0.0625  # held-out records are not reproduced
    assert last["mem/extract/skipped"] == 0
    assert last["mem/extract/skipped_nonmember"] == 0
    assert last["mem/mia_lm/auc/loss"] > 0.8
    assert last["mem/mia_lm/auc/min_k"] > 0.8
    # (n, p) rates are non-decreasing in n and the greedy hits are mostly likely under sampling too
    rates = [last[f"mem/extract/prob_rate/n{n}"] for n in (1, 10, 100)]
    assert rates == sorted(rates)
    assert rates[-1] >= last["mem/extract/exact_rate"] - 1e-12
    assert 0 < last["mem/extract/prob_mean"] <= 1
    assert monitor.decoding == "incremental"

    # every key reached the logger, with the epoch
    rows = _csv_rows(t)
    logged = {k for row in rows for k, v in row.items() if v not in ("", None)}
    for key in (
        "mem/extract/exact_rate",
        "mem/mia_lm/auc/zlib",
        "mem/mia_lm/tpr@1%fpr/min_k",
        "mem/extract/prob_rate/n100",
        "mem/extract/token_match_nonmember",
    ):
        assert key in logged, key

    # the run directory: per-probe numbers that reproduce the logged values
    monitor.flush()
    saved = load_npz(monitor.run_dir / "sequences.npz")
    assert saved["member_loss"].shape == (3, 16)
    assert saved["member_log_q"].shape == (3, 16, 1)
    assert "member_generated" not in saved  # only with log_secrets=True
    assert np.nanmean(saved["member_exact"][-1]) == pytest.approx(last["mem/extract/exact_rate"])
    auc = membership_inference(saved["member_zlib"][-1], saved["nonmember_zlib"][-1], fprs=()).auc
    assert auc == pytest.approx(last["mem/mia_lm/auc/zlib"])
    summary = load_json(monitor.run_dir / "metrics.json")
    assert summary["decoding"] == "incremental"
    assert len(summary["history"]) == 3
    files = RunDirectory(monitor.run_dir.parent).sequence()  # the report's reader
    assert files is not None
    assert files.metric("mem/extract/exact_rate").tolist() == [
        r["mem/extract/exact_rate"] for r in monitor.history
    ]


def test_scores_match_an_independent_computation() -> None:
    torch.manual_seed(1)
    model = _lstm().eval()
    seqs = [TokenDataset(TRAIN, TOK)[i] for i in range(4)] + [torch.tensor([1, 5, 6])]
    windows, lengths = pad_windows(seqs, 16)
    with torch.inference_mode():
        out = score_windows(
            LanguageModel(model, None, "auto"),
            windows,
            lengths,
            prefix_len=8,
            suffix_len=8,
            min_k=0.2,
            sampling=[(1.0, None), (0.5, 5)],
            batch_size=2,
            device=torch.device("cpu"),
        )
        for i, s in enumerate(seqs):
            s = s[:16]
            lp = F.log_softmax(model(s[None])[0, :-1].double(), -1).gather(1, s[1:, None])[:, 0]
            assert out.loss[i].item() == pytest.approx(-lp.mean().item(), rel=1e-5)
            assert out.min_k[i].item() == pytest.approx(float(min_k_prob(lp[None], k=0.2)[0]), rel=1e-5)
            if s.numel() < 16:
                assert np.isnan(out.exact[i].item())
                assert np.isnan(out.log_q[i, 0].item())
                continue
            assert out.log_q[i, 0].item() == pytest.approx(lp[7:].sum().item(), rel=1e-5)
            greedy = s[:8].clone()
            for _ in range(8):
                greedy = torch.cat([greedy, model(greedy[None])[0, -1].argmax()[None]])
            np.testing.assert_array_equal(out.generated[i].numpy(), greedy[8:].numpy())
            assert out.exact[i].item() == float(bool((greedy[8:] == s[8:]).all()))
            assert out.token_match[i].item() == pytest.approx((greedy[8:] == s[8:]).double().mean().item())


def test_np_rates_of_non_members_hand_worked() -> None:
    """(n, p) rates on non-member probes: the baseline of what sampling reproduces without training."""
    monitor = _monitor(
        n_tries=(1, 3), p_threshold=0.45, sampling=[{"temperature": 1.0}, {"temperature": 0.5, "top_k": 5}]
    )
    monitor._probes.member_indices, monitor._probes.nonmember_indices = np.arange(2), np.arange(4)
    monitor._zlib = np.ones(6)
    nan = math.nan
    q = {"member": [0.9, 0.2], "nonmember": [0.6, 0.3, 0.1, nan]}  # the last non-member is short
    rows = []
    for who in ("member", "nonmember"):
        for i, qi in enumerate(q[who]):
            exact = nan if math.isnan(qi) else 0.0
            rows.append([1.0 + i, -1.0, exact, exact, math.log(qi), math.log(qi / 2)])
    metrics = monitor.metrics(_scores(rows))
    # q >= 0.45 after n tries, 1 - (1 - q)^n: members 0.9 | 0.2 -> n=3: 0.488 (both pass)
    assert metrics["mem/extract/prob_rate/n1"] == pytest.approx(1 / 2)
    assert metrics["mem/extract/prob_rate/n3"] == pytest.approx(1.0)
    # non-members 0.6 | 0.3 -> n=3: 0.657 | 0.1 -> n=3: 0.271 (fails); the short probe is left out
    assert metrics["mem/extract/prob_rate_nonmember/n1"] == pytest.approx(1 / 3)
    assert metrics["mem/extract/prob_rate_nonmember/n3"] == pytest.approx(2 / 3)
    assert metrics["mem/extract/prob_mean_nonmember"] == pytest.approx((0.6 + 0.3 + 0.1) / 3)
    # the second scheme: q / 2 = 0.3 | 0.15 | 0.05 -> n=3: 0.657 | 0.386 | 0.143
    assert metrics["mem/extract/prob_rate_nonmember/n1/s1"] == 0.0
    assert metrics["mem/extract/prob_rate_nonmember/n3/s1"] == pytest.approx(1 / 3)
    assert metrics["mem/extract/prob_mean_nonmember/s1"] == pytest.approx((0.3 + 0.15 + 0.05) / 3)
    without = _monitor(n_tries=(1, 3))
    without._probes.member_indices, without._probes.nonmember_indices, without._zlib = (
        np.arange(2),
        np.arange(0),
        np.ones(2),
    )
    assert not any("nonmember" in k for k in without.metrics(_scores(np.array(rows[:2])[:, :5])))


def test_full_passes_give_the_cached_result() -> None:
    torch.manual_seed(2)
    model = _lstm().eval()
    windows, lengths = pad_windows([TokenDataset(TEXTS, TOK)[i] for i in range(10)], 24)
    kw = dict(
        prefix_len=12,
        suffix_len=12,
        min_k=0.2,
        sampling=[(1.0, None)],
        batch_size=4,
        device=torch.device("cpu"),
    )
    with torch.inference_mode():
        inc_lm, full_lm = LanguageModel(model, None, "auto"), LanguageModel(model, None, "full")
        a = score_windows(inc_lm, windows, lengths, **kw)  # type: ignore[arg-type]
        b = score_windows(full_lm, windows, lengths, **kw)  # type: ignore[arg-type]
    assert inc_lm.mode == "incremental"
    assert full_lm.mode == "full"
    np.testing.assert_array_equal(a.generated.numpy(), b.generated.numpy())
    _assert_same(a, b, rtol=1e-6)


@pytest.mark.slow
def test_leakage_early_stopping_accepts_the_extraction_rate(tmp_path: Path) -> None:
    torch.manual_seed(0)
    monitor = _monitor()
    stopper = LeakageEarlyStopping("mem/extract/exact_rate", 0.01)
    t = trainer(tmp_path, max_epochs=8, callbacks=[monitor, stopper])
    t.fit(_lstm(), lm_loader(TRAIN * 30, TOK, batch_size=32))
    assert stopper.stopped_epoch is not None
    assert t.current_epoch < 8
    assert monitor.history[-1]["mem/extract/exact_rate"] > 0.01
    assert all(row["mem/extract/exact_rate"] <= 0.01 for row in monitor.history[:-1])


def _run(
    tmp: Path, max_epochs: int, ckpt_path: str | None = None, **kwargs: Any
) -> SequenceMemorisationMonitor:
    torch.manual_seed(0)
    monitor = _monitor(sampling=[{"temperature": 1.0}, {"temperature": 0.8, "top_k": 5}], **kwargs)
    ckpt = ModelCheckpoint(dirpath=tmp / "ckpt", every_n_epochs=1, save_top_k=-1, filename="{epoch}")
    t = trainer(tmp, max_epochs=max_epochs, callbacks=[monitor, ckpt], enable_checkpointing=True)
    t.fit(_lstm(), lm_loader(TRAIN * 4, TOK, batch_size=32, shuffle=False), ckpt_path=ckpt_path)
    monitor.flush()
    return monitor


@pytest.mark.slow
def test_resume_gives_identical_numbers(tmp_path: Path) -> None:
    straight = _run(tmp_path / "straight", 3)
    _run(tmp_path / "first", 2)
    ckpt = tmp_path / "first" / "ckpt" / "epoch=1.ckpt"
    state = torch.load(ckpt, weights_only=True)  # plain tensors and primitives only
    (key,) = [k for k in state["callbacks"] if k.startswith("SequenceMemorisationMonitor")]
    assert state["callbacks"][key]["epochs"] == [0, 1]
    resumed = _run(tmp_path / "first", 3, ckpt_path=str(ckpt))
    assert resumed.history == straight.history
    assert "mem/extract/prob_rate/n10/s1" in resumed.history[-1]
    a, b = load_npz(resumed.run_dir / "sequences.npz"), load_npz(straight.run_dir / "sequences.npz")
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # a different measurement refuses to resume, naming the argument
    with pytest.raises(ValueError, match="`min_k`"):
        _run(tmp_path / "first", 3, ckpt_path=str(ckpt), min_k=0.5)


def test_state_dict_round_trip_and_old_state() -> None:
    m = _monitor()
    m._probes.member_indices, m._probes.nonmember_indices = np.array([3, 1]), np.array([0])
    m._epochs = [0]
    m._results = [
        _scores([[0.5, -1.0, 1.0, 1.0, -0.1], [0.7, -2.0, np.nan, np.nan, np.nan], [1.0, -3, 0, 0.5, -9]])
    ]
    m._history = [{"epoch": 0, "step": 3, "mem/extract/exact_rate": 1.0}]
    buf = __import__("io").BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    other = _monitor()
    other.load_state_dict(torch.load(buf, weights_only=True))
    _assert_same(other._results[0], m._results[0], rtol=0)
    assert other.history == m.history
    assert other.member_indices.tolist() == [3, 1]
    fresh = _monitor()
    fresh.load_state_dict({})
    assert fresh.history == []
