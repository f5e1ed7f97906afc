"""Importable test helpers (the package ``helpers``; ``tests/`` is on ``sys.path``, see ``conftest.py``).

Fixtures live in ``tests/conftest.py``. What is here must be importable by module path, because
``ddp_spawn`` pickles models and callbacks to its worker processes and subprocess scripts
(``tests/_hard_scripts``) import it: a class defined inside a test function or in ``conftest.py``
cannot be unpickled there.

* :mod:`helpers.data`: Gaussian blobs, indexed loaders, a resumable shuffling sampler, a DataModule.
* :mod:`helpers.models`: tiny classifiers (and deliberately broken variants) returning per-sample losses,
  and an independent per-sample loss computation for checks.
* :mod:`helpers.language_models`: tiny language models for the canary tests.
* :mod:`helpers.training`: the quiet CPU ``Trainer`` every callback test uses, and a fit with a checkpoint per epoch.
* :mod:`helpers.callbacks`: scripted monitors, an interruption, and :class:`~helpers.callbacks.RankDump`,
  the one callback that records what each DDP rank logged and holds.
* :mod:`helpers.state`: every recorded number of a set of callbacks, and exact comparisons.
* :mod:`helpers.every_monitor`: one model and data set that carry every monitor at once.
* :mod:`helpers.wandb_reader`: reads an offline W&B run back.
* :mod:`helpers.shadow_runs`: synthetic pools and real shadow runs for the attack tests.
* :mod:`helpers.report_figures`: the figure files the report writes.
* :mod:`helpers.hf_configs`: seven tiny transformers causal LMs built from configs.
* :mod:`helpers.frozen_process`: runs a script until its freeze point and SIGKILLs it there.
* :mod:`helpers.lora`: a LoRA GPT-2 with live adapters, its LightningModule and plain-torch row losses.
"""
