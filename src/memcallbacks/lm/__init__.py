"""Everything that runs a language model (no Lightning, no :mod:`memcallbacks.callbacks`).

* :mod:`~memcallbacks.lm.model`: the one rule for finding the Hugging Face model inside wrappers
  (``find_hf_model``), the one logits extractor (``output_logits``) and the one eval-mode
  context (``evaluating``).
* :mod:`~memcallbacks.lm.losses`: per-sample batch losses (classification, causal LM).
* :mod:`~memcallbacks.lm.scoring`: canary log-perplexity, batched, shared-prefix and trie paths;
  the ``IncrementalLM`` protocol.
* :mod:`~memcallbacks.lm.best_first`: the exact rank of a canary by best-first search.
* :mod:`~memcallbacks.lm.decoding`: the one greedy loop (``greedy_decode``) and beam search.
* :mod:`~memcallbacks.lm.hf`: the ``transformers`` KV-cache adapter and per-sample LM loss functions.
* :mod:`~memcallbacks.lm.windows`: teacher-forced scores and greedy extraction of probe windows.
* :mod:`~memcallbacks.lm.canary_rank`: the exposure strategies (exact, extrapolated, hybrid, ...).
* :mod:`~memcallbacks.lm.collate`: padding token-id rows (lists, tensors, ``datasets`` rows).
* :mod:`~memcallbacks.lm.packing`: packed batches whose samples stay the texts (``PackingCollator``,
  ``packed_text_losses``, ``packed_model_inputs``; also exported by ``memcallbacks``).
"""

from memcallbacks.lm.packing import PackingCollator, packed_model_inputs, packed_text_losses

__all__ = ["PackingCollator", "packed_model_inputs", "packed_text_losses"]
