"""Every monitor under fully sharded training: FSDP2 (``fully_shard``) + ``ModelParallelStrategy`` on CPU.

Two processes over gloo, ``ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)`` with
``fully_shard`` applied in ``configure_model``: every parameter is a ``DTensor`` and every forward pass
an all-gather, so a monitor that runs a different number of forward calls on one rank hangs the job,
and an evaluation under ``torch.inference_mode`` before a training step breaks that step. One process
pair per model (``tests/_hard_scripts/sharded_fit.py``), shared by the assertions of this file:

* the cross-callback MLP (:mod:`helpers.every_monitor`) with every monitor of ``build_callbacks``,
  under a *subclass* of ``ModelParallelStrategy``: trains (the canary scoring at fit start no longer
  poisons the first step), every rank logs the same numbers, and each number equals a plain-torch
  computation on the gathered full weights;
* the same fit stopped after epoch 0 and resumed from the strategy's distributed checkpoint in a
  new Trainer: every monitor's state, every logged number, the weights and the run directory equal
  the uninterrupted run's;
* a 2-layer GPT-2 built from a config with ``SequenceMemorisationMonitor`` (uneven shards, probes
  shorter than the window, a ``fit_start`` reference): the per-probe numbers equal plain torch and a
  1-process run of the same monitor on the gathered weights.

Each run is under a timeout, so a hang fails fast. The rule itself (what counts as sharded) is tested
without processes at the end.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import every_monitor as H
from helpers import sharded as S
from helpers.training import trainer as quiet_trainer
from memcallbacks.utilities.fileio import load_npz

SCRIPT = Path(__file__).resolve().parents[1] / "_hard_scripts" / "sharded_fit.py"
RUN_TIMEOUT = 240  # seconds for one 2-process fit (about 15-20 s on an idle 2-core machine)


def _run_sharded(model: str, out: Path) -> None:
    """Runs the script (which starts its second rank itself); kills the whole process group on a hang."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), model, str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=env,
    )
    try:
        log, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"the sharded {model} fit hung (> {RUN_TIMEOUT} s):\n{log[-4000:]}")
    assert proc.returncode == 0, log[-6000:]


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sharded_mlp")
    _run_sharded("mlp", out)
    return out


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sharded_gpt2")
    _run_sharded("gpt2", out)
    return out


@pytest.fixture(scope="module")
def mlp_resumed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sharded_mlp_resumed")
    _run_sharded("mlp-resume", out)
    return out


def _ranks(out: Path) -> list[dict[str, Any]]:
    return H.RankDump(out / "ranks").read()


def _auc(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """ROC AUC of score = -loss, members positive (Mann-Whitney, ties count half)."""
    m, n = -member_losses[:, None], -nonmember_losses[None, :]
    return float(((m > n).sum() + 0.5 * (m == n).sum()) / (m.size * n.size))


def _plain_mlp(out: Path) -> H.HardModel:
    model = H.HardModel(accountant=False)
    model.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    return model.eval()


def _ce(model: H.HardModel, dataset: Any, indices: np.ndarray) -> np.ndarray:
    x = torch.stack([dataset[int(i)][0] for i in indices])
    y = torch.stack([torch.as_tensor(dataset[int(i)][1]) for i in indices])
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none").double().numpy()


# --------------------------------------------------------------------------------------------
# the MLP with every monitor, under a ModelParallelStrategy subclass
# --------------------------------------------------------------------------------------------
@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.timeout(2 * RUN_TIMEOUT)
def test_sharded_mlp_trains_and_every_rank_logs_the_same(mlp_run: Path) -> None:
    r0, r1 = _ranks(mlp_run)
    assert r0["current_epoch"] == r1["current_epoch"] == 2
    assert r0["metrics"] == r1["metrics"]
    for key in ("mia/member_losses", "mia/nonmember_losses", "canary/exposure", "canary/rank",
                "audit/history", "dp/history", "stop/state", "traj/stat/count", "traj/stat/mean"):  # fmt: skip
        assert H.same(r0[key], r1[key]), key
    # it trained after the fit-start canary scoring: the loss fell, every sample visited once an epoch
    matrix = r0["traj/matrix"]
    assert matrix.shape == (45, 2)
    assert np.isfinite(matrix).all()
    assert np.nanmean(matrix[:, 1]) < np.nanmean(matrix[:, 0])
    assert r0["metrics"]["mem/traj/visited_frac"] == 1.0


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.timeout(2 * RUN_TIMEOUT)
def test_sharded_mlp_membership_probes_and_audit_equal_plain_torch_on_the_gathered_weights(
    mlp_run: Path,
) -> None:
    (r0, _), data, model = _ranks(mlp_run), H.Data(n_train=41), _plain_mlp(mlp_run)
    saved = load_npz(mlp_run / "run" / "membership" / "losses.npz")
    member = _ce(model, data.train_set, saved["member_indices"])
    nonmember = _ce(model, data.val, saved["nonmember_indices"])
    np.testing.assert_allclose(saved["member_losses"][-1], member, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(saved["nonmember_losses"][-1], nonmember, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r0["mia/member_losses"][-1], member, rtol=1e-5, atol=1e-6)
    assert r0["metrics"]["mem/mia/auc"] == pytest.approx(_auc(member, nonmember), abs=1e-6)
    assert r0["metrics"]["mem/gap/loss"] == pytest.approx(nonmember.mean() - member.mean(), abs=1e-5)

    # the probe-mode trajectory: 23 held-out samples in uneven shards (float16 store)
    probe = _ce(model, data.val, np.arange(23))
    assert r0["traj[probe]/matrix"].shape == (23, 2)
    np.testing.assert_allclose(r0["traj[probe]/matrix"][:, -1], probe, rtol=2e-3, atol=1e-3)

    # audit: score = -loss of each data-point canary, every rank scoring all of them
    audit = load_npz(mlp_run / "run" / "audit" / "epoch_0001.npz")
    expected = -_ce(model, data.audit_canaries, np.arange(len(data.audit_canaries)))
    np.testing.assert_allclose(audit["scores"], expected, rtol=1e-5, atol=1e-6)
    history = json.loads(r0["audit/history"])
    included = audit["included"].astype(bool)
    correct = int(((audit["guesses"] == 1) & included).sum() + ((audit["guesses"] == -1) & ~included).sum())
    assert history[-1]["mem/audit/correct"] == correct


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.timeout(2 * RUN_TIMEOUT)
def test_sharded_mlp_exact_exposure_equals_plain_torch_ranks(mlp_run: Path) -> None:
    (r0, _), model, cs = _ranks(mlp_run), _plain_mlp(mlp_run), H.make_canaries()
    candidates = cs.enumerate_candidates()

    def log_ppl(secret: str, start: int, end: int) -> float:
        ids = torch.tensor(cs.tokenizer.encode(cs.prefix + secret + cs.suffix))
        with torch.no_grad():
            logp = F.log_softmax(model(ids[None, :-1]).double(), -1)[0]
        return float(-sum(logp[t - 1, ids[t]] for t in range(start, end)))

    exposure = []
    for c in cs:
        scores = np.array([log_ppl(s, c.secret_start, c.secret_end) for s in candidates])
        own = scores[candidates.index(c.secret)]
        rank = 1 + int((np.delete(scores, candidates.index(c.secret)) <= own).sum())  # ties count against
        exposure.append(math.log2(len(candidates)) - math.log2(rank))
    np.testing.assert_allclose(r0["canary/exposure"][-1], exposure, rtol=1e-9, atol=1e-9)
    assert r0["metrics"]["mem/canary/exposure_max"] == pytest.approx(max(exposure), abs=1e-5)


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.timeout(2 * RUN_TIMEOUT)
def test_sharded_mlp_dp_epsilon_equals_an_accountant_stepped_as_often(mlp_run: Path) -> None:
    from opacus.accountants import RDPAccountant

    (r0, _) = _ranks(mlp_run)
    steps_per_epoch = math.ceil(math.ceil(45 / 2) / 4)  # 45 samples over 2 ranks, batches of 4
    accountant = RDPAccountant()
    for _ in range(2 * steps_per_epoch):
        accountant.step(noise_multiplier=1.0, sample_rate=0.05)
    assert r0["metrics"]["mem/dp/epsilon"] == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-6)


def _run_files(root: Path) -> dict[str, Any]:
    """The run directory's files, without what names the run (``run.json``, every ``run_id``)."""
    tree = H.load_tree(root)
    tree.pop("run.json", None)
    return {
        path: {k: v for k, v in content.items() if k != "run_id"} if isinstance(content, dict) else content
        for path, content in tree.items()
    }


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.timeout(4 * RUN_TIMEOUT)
def test_sharded_resume_from_the_distributed_checkpoint_equals_the_uninterrupted_run(
    mlp_run: Path, mlp_resumed_run: Path
) -> None:
    # the resumed run: epoch 0, the strategy's distributed checkpoint (a folder of shards), a new Trainer
    assert (mlp_resumed_run / "ckpt" / "epoch=0.ckpt").is_dir()
    for straight, resumed in zip(_ranks(mlp_run), _ranks(mlp_resumed_run)):
        assert straight["metrics"] == resumed["metrics"]
        assert H.differences(straight, resumed) == []
    weights = torch.load(mlp_run / "weights.pt", weights_only=True)
    for key, value in torch.load(mlp_resumed_run / "weights.pt", weights_only=True).items():
        assert torch.equal(value, weights[key]), key
    assert H.differences(_run_files(mlp_run / "run"), _run_files(mlp_resumed_run / "run")) == []


# --------------------------------------------------------------------------------------------
# GPT-2 with the sequence monitor, under ModelParallelStrategy
# --------------------------------------------------------------------------------------------
def _plain_gpt2(out: Path) -> S.GPT2LM:
    module = S.GPT2LM(lr=0.0)
    module.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    return module


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.timeout(2 * RUN_TIMEOUT)
def test_sharded_gpt2_sequence_scores_equal_plain_torch(gpt2_run: Path) -> None:
    r0, r1 = _ranks(gpt2_run)
    keys = sorted(k for k in r0["metrics"] if k.startswith(("mem/extract", "mem/mia_lm")))
    assert "mem/mia_lm/auc/min_k" in keys
    assert "mem/mia_lm/auc/ref" in keys
    assert {k: r0["metrics"][k] for k in keys} == {k: r1["metrics"][k] for k in keys}
    saved = load_npz(gpt2_run / "run" / "sequence" / "sequences.npz")
    assert saved["member_loss"].shape == (2, 15)
    assert saved["nonmember_loss"].shape == (2, 10)
    _, members, nonmembers = S.gpt2_data()
    model = _plain_gpt2(gpt2_run).model
    np.testing.assert_allclose(saved["member_loss"][-1], S.window_losses(model, members), rtol=1e-5)
    np.testing.assert_allclose(saved["nonmember_loss"][-1], S.window_losses(model, nonmembers), rtol=1e-5)
    # the reference is the weights at fit start (GPT2LM is seeded), scored before the first step
    start = S.GPT2LM().model
    np.testing.assert_allclose(saved["member_reference_loss"], S.window_losses(start, members), rtol=1e-5)
    # the four short members were decoded for the lockstep only: no extraction result
    short = saved["member_lengths"] < S.PREFIX + S.SUFFIX
    assert short.tolist() == [False] * 8 + [True] * 4 + [False] * 3
    assert np.isnan(saved["member_exact"][:, short]).all()
    assert np.isfinite(saved["member_exact"][:, ~short]).all()


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.timeout(2 * RUN_TIMEOUT)
def test_sharded_gpt2_sequence_keys_equal_a_one_process_run(gpt2_run: Path, tmp_path: Path) -> None:
    r0, _ = _ranks(gpt2_run)
    train, members, nonmembers = S.gpt2_data()
    single = S.sequence_monitor(tmp_path / "single", members, nonmembers)
    t = quiet_trainer(tmp_path, max_epochs=1, callbacks=[single])
    t.fit(_plain_gpt2(gpt2_run), train)  # lr 0: the gathered final weights throughout
    single.flush()
    one = load_npz(tmp_path / "single" / "sequence" / "sequences.npz")
    saved = load_npz(gpt2_run / "run" / "sequence" / "sequences.npz")
    for who in ("member", "nonmember"):
        for field in ("loss", "min_k", "min_k_pp", "zlib", "exact", "token_match", "log_q"):
            k = f"{who}_{field}"
            np.testing.assert_allclose(
                one[k][0], saved[k][-1], rtol=1e-5, atol=1e-7, equal_nan=True, err_msg=k
            )
    for key, value in r0["metrics"].items():
        if key.startswith(("mem/extract", "mem/mia_lm")) and not key.endswith("/ref"):
            assert float(t.callback_metrics[key]) == pytest.approx(value, abs=1e-6, nan_ok=True), key


# --------------------------------------------------------------------------------------------
# the rule, without processes
# --------------------------------------------------------------------------------------------
def test_the_rule_reads_sharding_from_the_model_and_strategy_classes_never_names() -> None:
    import pytorch_lightning as pl
    from pytorch_lightning.strategies import (
        DDPStrategy,
        DeepSpeedStrategy,
        FSDPStrategy,
        ModelParallelStrategy,
    )

    from memcallbacks.lightning import strategy_shards_parameters
    from memcallbacks.utilities.distributed import parameters_sharded, sharding_kind

    class CustomModelParallel(ModelParallelStrategy):
        pass

    class ModelParallelStrategyLookalike(DDPStrategy):  # a DDP subclass that only borrows the name
        pass

    assert strategy_shards_parameters(CustomModelParallel()) is True
    assert strategy_shards_parameters(FSDPStrategy()) is True
    assert strategy_shards_parameters(DeepSpeedStrategy.__new__(DeepSpeedStrategy)) is True
    assert strategy_shards_parameters(ModelParallelStrategyLookalike()) is False
    assert strategy_shards_parameters(pl.strategies.SingleDeviceStrategy("cpu")) is False
    assert strategy_shards_parameters(object()) is None

    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert not parameters_sharded(net)
    assert not parameters_sharded("not a module")
    net[0].weight.ds_id, net[0].weight.ds_status = 3, "NOT_AVAILABLE"  # DeepSpeed ZeRO-3's marks
    assert sharding_kind(net) == "deepspeed"


def test_the_lightning_namespace_strategies_follow_the_same_rule() -> None:
    lightning_strategies = pytest.importorskip("lightning.pytorch.strategies")
    from memcallbacks.lightning import strategy_shards_parameters

    class Sub(lightning_strategies.ModelParallelStrategy):
        pass

    assert strategy_shards_parameters(Sub()) is True
    assert strategy_shards_parameters(lightning_strategies.DDPStrategy()) is False


def test_a_strategy_the_rule_cannot_classify_is_taken_as_sharded_with_one_warning() -> None:
    from types import SimpleNamespace

    from memcallbacks.lightning import sharded_run

    class HomeMadeStrategy:  # neither a DDP nor a sharding strategy of Lightning
        pass

    trainer = SimpleNamespace(
        world_size=2, strategy=HomeMadeStrategy(), lightning_module=torch.nn.Linear(2, 2)
    )
    with pytest.warns(UserWarning, match="cannot tell whether the strategy .*HomeMadeStrategy.* shards"):
        assert sharded_run(trainer) is True  # the evaluation that never hangs
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sharded_run(trainer) is True  # warned once per strategy class
    assert sharded_run(SimpleNamespace(world_size=1, strategy=HomeMadeStrategy())) is False


def test_evaluations_make_no_inference_tensors() -> None:
    # an inference-mode forward before a training step leaves FSDP2's all-gather buffers as inference
    # tensors and the step fails: every evaluation runs under no_grad instead
    from memcallbacks.callbacks.probes import evaluate_sample_losses
    from memcallbacks.lm.model import evaluating

    net = torch.nn.Linear(3, 2)
    with evaluating(net):
        out = net(torch.randn(4, 3))
        assert not torch.is_inference_mode_enabled()
    assert not out.is_inference()
    seen: list[bool] = []

    def loss_fn(module: Any, batch: Any) -> torch.Tensor:
        seen.append(torch.is_inference_mode_enabled())
        return F.cross_entropy(module(batch[0]), batch[1], reduction="none")

    data = torch.utils.data.TensorDataset(torch.randn(5, 3), torch.randint(0, 2, (5,)))
    evaluate_sample_losses(net, data, loss_fn, batch_size=2)
    assert seen == [False, False, False]
