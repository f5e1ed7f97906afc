"""The exposure-strategy registry of memcallbacks.lm.canary_rank: names, applicability, resolution.

No model is run: ``supports`` and :func:`resolve_exposure_method` only look at what the module
offers (the ``IncrementalLM`` methods), the space and the config.
"""

from __future__ import annotations

from typing import Any

import pytest

from memcallbacks import CanaryExposureMonitor, CanarySet, CharTokenizer
from memcallbacks.lm.canary_rank import (
    EXPOSURE_STRATEGIES,
    ExactList,
    ExactTrie,
    ExposureConfig,
    ExposureStrategy,
    Extrapolated,
    Hybrid,
    resolve_exposure_method,
)

FMT = "my pin is {secret}."


class Incremental:
    """Offers the IncrementalLM methods (never called here)."""

    def init_state(self, *args: Any) -> None: ...

    def step(self, *args: Any) -> None: ...

    def expand_state(self, *args: Any) -> None: ...


class Plain:
    """A module with no IncrementalLM methods: only batched forward passes apply."""


def canaries(length: int = 3, **kw: Any) -> CanarySet:
    return CanarySet(FMT, CharTokenizer(), length=length, repetitions=(1,), per_count=2, seed=0, **kw)


def listed() -> CanarySet:
    """A space given as a list: no alphabet, so neither the trie nor the best-first search applies."""
    return CanarySet(
        FMT, CharTokenizer(), candidates=["alice", "bob", "carol", "dave"], repetitions=(1,), per_count=2
    )


def a_score_fn(module: Any, token_ids: Any, target_mask: Any) -> Any:  # pragma: no cover - never called
    raise AssertionError


def test_registered_names() -> None:
    assert sorted(EXPOSURE_STRATEGIES) == ["exact_list", "exact_trie", "extrapolated", "hybrid"]
    for name, strategy in EXPOSURE_STRATEGIES.items():
        assert isinstance(strategy, ExposureStrategy)
        assert strategy.name == name
    kinds = {name: type(s) for name, s in EXPOSURE_STRATEGIES.items()}
    assert kinds == {
        "exact_list": ExactList,
        "exact_trie": ExactTrie,
        "extrapolated": Extrapolated,
        "hybrid": Hybrid,
    }
    needs = sorted(name for name, s in EXPOSURE_STRATEGIES.items() if s.needs_references)
    assert needs == ["extrapolated", "hybrid"]


def test_exact_list_applies_up_to_max_exact() -> None:
    strategy, cs = EXPOSURE_STRATEGIES["exact_list"], canaries()
    assert cs.space_size == 1000
    assert strategy.supports(Plain(), cs, ExposureConfig(max_exact=1000))
    assert strategy.supports(Incremental(), listed(), ExposureConfig())
    assert not strategy.supports(Plain(), cs, ExposureConfig(max_exact=999))


def test_exact_trie_needs_an_incremental_module_single_token_characters_and_a_small_space() -> None:
    strategy, cs = EXPOSURE_STRATEGIES["exact_trie"], canaries()
    assert strategy.supports(Incremental(), cs, ExposureConfig())
    assert not strategy.supports(Plain(), cs, ExposureConfig())
    assert not strategy.supports(
        Incremental(), cs, ExposureConfig(score_fn=a_score_fn)
    )  # custom scores: no trie
    assert not strategy.supports(Incremental(), listed(), ExposureConfig())
    assert not strategy.supports(Incremental(), cs, ExposureConfig(max_exact=999))


def test_extrapolated_applies_everywhere() -> None:
    strategy = EXPOSURE_STRATEGIES["extrapolated"]
    for module in (Plain(), Incremental()):
        for cs in (canaries(), listed(), canaries(length=19)):
            assert strategy.supports(module, cs, ExposureConfig(score_fn=a_score_fn, max_exact=1))


def test_hybrid_needs_an_alphabet_an_incremental_module_and_a_space_below_2_to_the_62() -> None:
    strategy = EXPOSURE_STRATEGIES["hybrid"]
    assert strategy.supports(Incremental(), canaries(length=8), ExposureConfig())
    assert strategy.supports(Incremental(), canaries(length=18), ExposureConfig())  # 10**18 < 2**62
    assert not strategy.supports(Incremental(), canaries(length=19), ExposureConfig())  # 10**19 > 2**62
    assert not strategy.supports(Plain(), canaries(length=8), ExposureConfig())
    assert not strategy.supports(Incremental(), listed(), ExposureConfig())
    assert not strategy.supports(Incremental(), canaries(length=8), ExposureConfig(score_fn=a_score_fn))


@pytest.mark.parametrize("name", ["extrapolated", "hybrid"])
def test_reference_strategies_refuse_to_run_without_references(name: str) -> None:
    with pytest.raises(
        ValueError, match=f"the '{name}' exposure strategy needs sampled references; pass `references=`"
    ):
        EXPOSURE_STRATEGIES[name].compute(Plain(), canaries(), ExposureConfig(), references=None)


@pytest.mark.filterwarnings(
    "ignore:exposure method='auto' falls back to 'extrapolated':UserWarning"
)  # warned once
@pytest.mark.parametrize(
    ("method", "module", "cs", "config", "expected"),
    [
        # "exact": the trie where it applies, else the list
        ("exact", Incremental(), canaries(), ExposureConfig(), "exact_trie"),
        ("exact", Plain(), canaries(), ExposureConfig(), "exact_list"),
        ("exact", Incremental(), listed(), ExposureConfig(), "exact_list"),
        # "auto", a space no larger than the references plus the canaries: exact
        ("auto", Incremental(), canaries(), ExposureConfig(), "exact_trie"),
        ("auto", Plain(), canaries(), ExposureConfig(), "exact_list"),
        # "auto", a larger space: the trie when it fits max_exact, else hybrid, else extrapolated
        ("auto", Incremental(), canaries(length=5), ExposureConfig(), "exact_trie"),
        ("auto", Incremental(), canaries(length=8), ExposureConfig(), "hybrid"),
        ("auto", Incremental(), canaries(length=8), ExposureConfig(max_exact=10**8), "exact_trie"),
        ("auto", Plain(), canaries(length=8), ExposureConfig(), "extrapolated"),
        ("auto", Incremental(), canaries(length=19), ExposureConfig(), "extrapolated"),
        # a registered name is taken as it is
        ("extrapolated", Incremental(), canaries(), ExposureConfig(), "extrapolated"),
        ("exact_list", Incremental(), canaries(), ExposureConfig(), "exact_list"),
        ("hybrid", Plain(), canaries(length=8), ExposureConfig(), "hybrid"),
    ],
)
def test_resolve_exposure_method(
    method: str, module: Any, cs: CanarySet, config: ExposureConfig, expected: str
) -> None:
    assert resolve_exposure_method(method, module, cs, config, num_references=10_000) == expected


@pytest.mark.filterwarnings(
    "ignore:exposure method='auto' falls back to 'extrapolated':UserWarning"
)  # warned once
def test_auto_counts_the_references_and_the_canaries() -> None:
    cs = canaries()  # 1000 candidates, 2 canaries
    config = ExposureConfig(max_exact=10)  # the trie does not fit: only the size rule can make it exact
    assert resolve_exposure_method("auto", Plain(), cs, config, num_references=998) == "exact_list"
    assert resolve_exposure_method("auto", Plain(), cs, config, num_references=997) == "extrapolated"


def test_an_unknown_method_is_refused_by_name_with_the_registered_ones() -> None:
    expected = (
        r"^`method` can be 'auto', 'exact', 'exact_list', 'exact_trie', 'extrapolated', 'hybrid', "
        r"got 'exact_tree' \(str\)"
    )
    with pytest.raises(ValueError, match=expected):
        CanaryExposureMonitor(canaries(), method="exact_tree")


def test_a_registered_strategy_becomes_a_valid_method(monkeypatch: pytest.MonkeyPatch) -> None:
    class Mine(Extrapolated):
        name = "mine"

    monkeypatch.setitem(EXPOSURE_STRATEGIES, "mine", Mine())
    monitor = CanaryExposureMonitor(canaries(), method="mine")
    assert monitor.method == "mine"
    assert resolve_exposure_method("mine", Plain(), canaries(), ExposureConfig(), num_references=10) == "mine"


def test_an_unregistered_name_is_refused_by_the_resolver_with_the_registered_names() -> None:
    # before: the name came back unchanged and failed later with a KeyError inside the monitor
    with pytest.raises(
        ValueError, match=r"`method`='mine' is not an exposure strategy.*'exact_list'.*'hybrid'"
    ):
        resolve_exposure_method("mine", Plain(), canaries(), ExposureConfig(), num_references=10)
