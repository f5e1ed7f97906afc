"""The fine-tuning matrix: what the monitors log, per architecture and padding side, against plain torch.

Seven transformers architectures built from tiny configs (2 layers, hidden 32, the 98-token
character vocabulary, no download) are each fine-tuned once, in a real Trainer, on short token rows
plus two canaries, with the monitors attached twice: probes padded on the right and probes padded on
the left (``name="right"`` / ``name="left"``). The training batches are right-padded by transformers'
``DataCollatorForLanguageModeling``; the probe batches of the membership monitor by the same collator
with the tokenizer's ``padding_side`` set to each side, and the sequence monitor's rows are padded to
one width on that side with their ``attention_mask``, as ``datasets`` rows tokenised with
``padding="max_length"`` are. After the fit, this file recomputes every checked number from the final
weights with plain torch, each sequence run alone and unpadded:

* member / non-member mean losses and the loss-attack AUC (a rank AUC written out here);
* exact canary ranks over all 10^3 secrets (every candidate scored by a full forward pass);
* the greedy exact-match and token-match rates (a greedy loop of full forward passes).

Two more entries: bf16-mixed training (the monitors evaluate in float32 with autocast off, so their
numbers equal a float32 recomputation to float32 rounding) and gradient accumulation (step capture
records the losses the training steps really computed).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import transformers as tf
from torch.utils.data import DataLoader

from helpers.hf_configs import tiny_causal_lm_configs
from memcallbacks import (
    CanaryExposureMonitor,
    CanarySet,
    CharTokenizer,
    IndexedDataset,
    LossTrajectoryTracker,
    MembershipInferenceMonitor,
    SequenceMemorisationMonitor,
    split_index,
)
from memcallbacks.lm.losses import causal_lm_step_losses, position_ids_from_mask

# 12 + 12 probes: TPR at low FPR means little here (warned by the monitors); the AUC and losses are checked
pytestmark = pytest.mark.filterwarnings("ignore:.*fewer than 1/FPR:UserWarning")

TOK = CharTokenizer()
V, PAD, BOS = TOK.vocab_size, 0, 1
PREFIX, SUFFIX = 5, 3  # the sequence monitor's window
SIDES = ("right", "left")


# mistral_window: a window of 4 columns, shorter than the 8-token probe window and the canaries (15 tokens)
CONFIGS = tiny_causal_lm_configs(V, pad=PAD, bos=BOS)


# --------------------------------------------------------------------------------------------------
# data: short token rows (members, non-members) and two canaries; a real transformers collator
# --------------------------------------------------------------------------------------------------
def _rows(n: int, seed: int) -> list[list[int]]:
    """``n`` rows of ``<bos>`` and 8-11 letters of a 12-letter alphabet that mostly count up (a -> b -> c ...).

    Each next letter is the previous one's successor with probability 0.7, else drawn at random: the
    rule is learnt in a few steps by every architecture, so greedy decoding reproduces some suffixes and
    not others; the random jumps are what a member's training teaches beyond the rule.
    """
    g = torch.Generator().manual_seed(seed)
    letters = TOK.encode("abcdefghijkl", add_special_tokens=False)
    out = []
    for _ in range(n):
        k = int(torch.randint(8, 12, (1,), generator=g))
        at = [int(torch.randint(0, 12, (1,), generator=g))]
        for _ in range(k - 1):
            jump = bool(torch.rand(1, generator=g) > 0.7)
            at.append(int(torch.randint(0, 12, (1,), generator=g)) if jump else (at[-1] + 1) % 12)
        out.append([BOS, *(letters[i] for i in at)])
    return out


MEMBERS, NONMEMBERS = _rows(12, seed=1), _rows(12, seed=2)
CANARIES = CanarySet("my pin is {secret}.", TOK, length=3, repetitions=(1, 8), per_count=1, seed=3)


def _tokenizer(side: str) -> Any:
    """A transformers tokenizer over the character vocabulary (no download), padding on ``side``."""
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(V)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    return tf.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="t0", padding_side=side)


def _collator(side: str) -> Any:
    return tf.DataCollatorForLanguageModeling(_tokenizer(side), mlm=False, return_tensors="pt")


def _padded_rows(rows: list[list[int]], side: str) -> list[dict[str, torch.Tensor]]:
    """Rows padded to one width on ``side`` with their attention masks (``padding="max_length"``)."""
    width = max(len(r) for r in rows) + 2
    out = []
    for r in rows:
        pad = [PAD] * (width - len(r))
        ones, zeros = [1] * len(r), [0] * len(pad)
        ids, mask = (r + pad, ones + zeros) if side == "right" else (pad + r, zeros + ones)
        out.append({"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)})
    return out


def _train_rows() -> list[dict[str, list[int]]]:
    canary_rows = [list(c.token_ids) for c in CANARIES for _ in range(c.repetitions)]
    return [{"input_ids": r} for r in MEMBERS * 8 + canary_rows]


class _LM(pl.LightningModule):
    """A LightningModule holding a transformers causal LM as ``self.model``, as fine-tuning code does."""

    def __init__(self, arch: str, lr: float = 1e-2) -> None:
        super().__init__()
        cls, config = CONFIGS[arch]
        torch.manual_seed(0)
        self.model = cls(config())
        self.lr = lr
        self.logits_dtypes: list[torch.dtype] = []

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return out.logits  # type: ignore[no-any-return]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> Any:
        out = self.model(**batch, position_ids=position_ids_from_mask(batch["attention_mask"]))
        self.logits_dtypes.append(out.logits.dtype)
        return out.loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def _monitors(side: str, run_dir: Path) -> list[Any]:
    common = {"name": side, "run_dir": run_dir}
    mia = MembershipInferenceMonitor(
        [{"input_ids": r} for r in MEMBERS],
        [{"input_ids": r} for r in NONMEMBERS],
        collate_fn=_collator(side),
        trajectory_attack=False,
        **common,
    )
    seq = SequenceMemorisationMonitor(
        _padded_rows(MEMBERS, side),
        _padded_rows(NONMEMBERS, side),
        prefix_len=PREFIX,
        suffix_len=SUFFIX,
        n_tries=(1,),
        log_secrets=True,  # sequences.npz keeps the greedy continuations, compared below
        **common,
    )
    return [mia, seq]


def _fit(arch: str, tmp: Path, **trainer_kwargs: Any) -> dict[str, Any]:
    module = _LM(arch)
    monitors = {side: _monitors(side, tmp / "run") for side in SIDES}
    exposure = CanaryExposureMonitor(CANARIES, method="auto", run_dir=tmp / "run", progress=False)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp),
        callbacks=[*monitors["right"], *monitors["left"], exposure], **trainer_kwargs,
    )  # fmt: skip
    loader = DataLoader(_train_rows(), batch_size=8, shuffle=True, collate_fn=_collator("right"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        torch.manual_seed(1)
        trainer.fit(module, loader)
    return {
        "module": module,
        "monitors": monitors,
        "exposure": exposure,
        "trainer": trainer,
        "run_dir": tmp / "run",
    }


# --------------------------------------------------------------------------------------------------
# the plain-torch reference, from the final weights: each sequence alone, unpadded
# --------------------------------------------------------------------------------------------------
def _token_logp(model: Any, ids: list[int]) -> torch.Tensor:
    """``[n - 1]`` float64 log p(ids[t + 1] | ids[: t + 1]), one unpadded, unmasked float32 pass."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits.double(), dim=-1)
    return logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]


def _mean_loss(model: Any, ids: list[int]) -> float:
    return float(-_token_logp(model, ids).mean())


def _rank_auc(member_loss: np.ndarray, nonmember_loss: np.ndarray) -> float:
    """P(a member's score > a non-member's) with score = -loss, ties half (Mann-Whitney), by pairs."""
    sm, sn = -member_loss[:, None], -nonmember_loss[None, :]
    return float(((sm > sn).sum() + 0.5 * (sm == sn).sum()) / (sm.size * sn.size))


def _greedy(model: Any, prefix: list[int], steps: int) -> list[int]:
    seq = list(prefix)
    with torch.no_grad():
        for _ in range(steps):
            seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prefix) :]


def _candidate_scores(model: Any) -> dict[str, float]:
    """Log-perplexity of the secret tokens given the prefix, for every one of the 10^3 secrets (batched, unpadded)."""
    prefix = CANARIES.prefix_ids
    secrets = CANARIES.enumerate_candidates(10**3)
    ids = torch.tensor([prefix + CANARIES.encode_secret(s) for s in secrets])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.double(), dim=-1)
    n = len(prefix)
    picked = logp[:, n - 1 : -1].gather(-1, ids[:, n:].unsqueeze(-1)).squeeze(-1)
    return dict(zip(secrets, (-picked.sum(dim=1)).tolist()))


@pytest.fixture(scope="module", params=list(CONFIGS))
def fitted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One fine-tuning run per architecture, shared by its padding sides."""
    run = _fit(request.param, tmp_path_factory.mktemp(request.param))
    run["arch"] = request.param
    return run


def _last(monitor: Any) -> dict[str, Any]:
    assert len(monitor.history) == 2  # one evaluation per epoch
    return dict(monitor.history[-1])


@pytest.mark.parametrize("side", SIDES)
def test_membership_losses_and_auc_equal_plain_torch(fitted: dict[str, Any], side: str) -> None:
    model = fitted["module"].model.eval()
    mia = fitted["monitors"][side][0]
    logged = _last(mia)
    m = np.array([_mean_loss(model, r) for r in MEMBERS])
    n = np.array([_mean_loss(model, r) for r in NONMEMBERS])
    assert logged["mem/gap/member_loss"] == pytest.approx(m.mean(), abs=2e-5)
    assert logged["mem/gap/nonmember_loss"] == pytest.approx(n.mean(), abs=2e-5)
    assert logged["mem/gap/loss"] == pytest.approx(n.mean() - m.mean(), abs=4e-5)
    assert logged["mem/mia/auc"] == pytest.approx(_rank_auc(m, n), abs=1e-9)
    assert m.mean() < n.mean()  # the fine-tune learned its members: the check is not of an untrained model


@pytest.mark.parametrize("side", SIDES)
def test_greedy_extraction_and_window_scores_equal_plain_torch(fitted: dict[str, Any], side: str) -> None:
    model = fitted["module"].model.eval()
    seq = fitted["monitors"][side][1]
    logged = _last(seq)
    files = np.load(fitted["run_dir"] / f"sequence_{side}" / "sequences.npz")
    width = PREFIX + SUFFIX
    for who, rows, order in (
        ("", MEMBERS, seq.member_indices),
        ("_nonmember", NONMEMBERS, seq.nonmember_indices),
    ):
        probes = [rows[int(i)] for i in order]
        got = [_greedy(model, r[:PREFIX], SUFFIX) for r in probes]
        true = [r[PREFIX:width] for r in probes]
        exact = np.array([g == t for g, t in zip(got, true)], dtype=float)
        token_match = np.array([np.mean(np.equal(g, t)) for g, t in zip(got, true)])
        assert logged[f"mem/extract/exact_rate{who}"] == pytest.approx(exact.mean(), abs=1e-12)
        assert logged[f"mem/extract/token_match{who}"] == pytest.approx(token_match.mean(), abs=1e-12)
        name = "member" if who == "" else "nonmember"
        np.testing.assert_array_equal(files[f"{name}_exact"][-1], exact)  # probe by probe
        window_loss = np.array([_mean_loss(model, r[:width]) for r in probes])
        np.testing.assert_allclose(files[f"{name}_loss"][-1], window_loss, rtol=0, atol=2e-5)
        if who == "":  # the greedy continuations themselves (saved with log_secrets=True)
            assert files["member_generated"].tolist() == got
            assert len({tuple(g) for g in got}) > 1  # they depend on the prefix: the check has content
    m = np.array([_mean_loss(model, r[:width]) for r in MEMBERS])
    n = np.array([_mean_loss(model, r[:width]) for r in NONMEMBERS])
    assert logged["mem/mia_lm/auc/loss"] == pytest.approx(_rank_auc(m, n), abs=1e-9)


def test_exact_canary_ranks_equal_full_enumeration(fitted: dict[str, Any]) -> None:
    model = fitted["module"].model.eval()
    exposure = fitted["exposure"]
    assert exposure.resolved_method == "exact_trie"  # the KV-cache trie, not extrapolation
    scores = _candidate_scores(model)
    values = np.array(list(scores.values()))
    # ties count against the canary, itself included
    expected = [int(np.sum(values <= scores[c.secret])) for c in CANARIES]
    arrays = exposure.arrays
    assert np.asarray(arrays["rank"])[-1].tolist() == expected
    np.testing.assert_allclose(
        np.asarray(arrays["exposure"])[-1], np.log2(1000) - np.log2(expected), rtol=0, atol=1e-9
    )
    assert _last(exposure)["mem/canary/rank_min"] == min(expected)


# --------------------------------------------------------------------------------------------------
# bf16-mixed: the monitors evaluate in float32 with autocast off
# --------------------------------------------------------------------------------------------------
def test_bf16_mixed_training_is_measured_in_float32(tmp_path: Path) -> None:
    run = _fit("llama_gqa", tmp_path, precision="bf16-mixed")
    module = run["module"]
    assert torch.bfloat16 in module.logits_dtypes  # the training steps really ran under bf16 autocast
    model = module.model.eval()
    assert next(model.parameters()).dtype == torch.float32
    m = np.array([_mean_loss(model, r) for r in MEMBERS])
    n = np.array([_mean_loss(model, r) for r in NONMEMBERS])
    with torch.autocast(
        "cpu", dtype=torch.bfloat16
    ):  # what an evaluation under the training's autocast gives
        bf16 = np.array([_mean_loss(model, r) for r in MEMBERS])
    assert np.abs(bf16 - m).max() > 1e-3  # so float32 agreement below is not a coincidence
    for side in SIDES:
        mia, seq = run["monitors"][side]
        logged = _last(mia)
        # float32 passes over padded batches vs unpadded ones: float32 rounding only
        assert logged["mem/gap/member_loss"] == pytest.approx(m.mean(), abs=2e-5)
        assert logged["mem/gap/nonmember_loss"] == pytest.approx(n.mean(), abs=2e-5)
        assert logged["mem/mia/auc"] == pytest.approx(_rank_auc(m, n), abs=1e-9)
        rate = np.mean([_greedy(model, r[:PREFIX], SUFFIX) == r[PREFIX : PREFIX + SUFFIX] for r in MEMBERS])
        assert _last(seq)["mem/extract/exact_rate"] == pytest.approx(rate, abs=1e-12)
    scores = _candidate_scores(model)
    values = np.array(list(scores.values()))
    expected = [int(np.sum(values <= scores[c.secret])) for c in CANARIES]
    assert np.asarray(run["exposure"].arrays["rank"])[-1].tolist() == expected


# --------------------------------------------------------------------------------------------------
# gradient accumulation: step capture records the losses the steps computed
# --------------------------------------------------------------------------------------------------
class _CapturingLM(_LM):
    """Step capture from the step's own logits; also keeps what each step computed, for the test."""

    def __init__(self, arch: str) -> None:
        super().__init__(arch)
        self.computed: dict[int, dict[int, float]] = {}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> Any:
        index, batch = split_index(batch)
        out = self.model(**batch, position_ids=position_ids_from_mask(batch["attention_mask"]))
        per_sample = causal_lm_step_losses(out.logits, batch)
        seen = self.computed.setdefault(self.current_epoch, {})
        seen.update(zip(index.tolist(), per_sample.detach().tolist()))
        return {"loss": per_sample.mean(), "sample_loss": per_sample.detach(), "sample_index": index}


def _indexed_collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    batch = dict(_collator("left")([{"input_ids": it["input_ids"]} for it in items]))
    batch["index"] = torch.tensor([it["index"] for it in items])
    return batch


def test_gradient_accumulation_step_capture_records_the_steps_losses(tmp_path: Path) -> None:
    module = _CapturingLM("gpt2")
    tracker = LossTrajectoryTracker(dtype="float32", run_dir=tmp_path / "run")
    data = IndexedDataset(_train_rows())  # 96 member rows + 9 canary rows: 14 batches of 8
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
        accumulate_grad_batches=4, callbacks=[tracker],
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        torch.manual_seed(1)
        trainer.fit(module, DataLoader(data, batch_size=8, shuffle=True, collate_fn=_indexed_collate))
    assert trainer.global_step == 2 * 4  # ceil(14 / 4) optimizer steps per epoch: the weights did change
    assert tracker.store is not None
    for epoch in (0, 1):
        computed = module.computed[epoch]
        assert sorted(computed) == list(range(len(data)))
        expected = np.array([computed[i] for i in range(len(data))])
        recorded = np.asarray(tracker.store.epoch(epoch))
        # the unscaled per-sample losses, not Lightning's loss / 4
        np.testing.assert_allclose(recorded, expected, rtol=0, atol=1e-6)
    assert not np.allclose(tracker.store.epoch(0), tracker.store.epoch(1), atol=1e-3)
