"""Seven tiny transformers causal LMs built from configs (2 layers, hidden 32, no download).

The architectures cover learned (GPT-2, OPT), rotary (GPT-NeoX, Phi) and grouped-query
(Llama, Qwen2, Mistral with a sliding window of 4 columns) attention.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import transformers as tf


def tiny_causal_lm_configs(
    vocab_size: int, pad: int = 0, bos: int = 1, eos: int = 2
) -> dict[str, tuple[Any, Callable[[], Any]]]:
    """``name -> (model class, config factory)`` for the seven tiny architectures.

    Args:
        vocab_size: The vocabulary size of every config.
        pad: The ``pad_token_id``.
        bos: The ``bos_token_id``.
        eos: The ``eos_token_id``.

    Returns:
        The classes and zero-argument config factories, keyed ``gpt2``, ``gpt_neox``, ``opt``,
        ``llama_gqa``, ``qwen2_gqa``, ``mistral_window`` and ``phi``.

    Example:
        >>> cls, config = tiny_causal_lm_configs(98)["gpt2"]
        >>> model = cls(config())
    """
    small: dict[str, Any] = {
        "vocab_size": vocab_size,
        "pad_token_id": pad,
        "bos_token_id": bos,
        "eos_token_id": eos,
    }

    def llama_like(cls: Any, **extra: Any) -> Callable[[], Any]:
        return lambda: cls(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,  # grouped-query attention
            max_position_embeddings=64,
            **small,
            **extra,
        )

    def rotary(cls: Any) -> Callable[[], Any]:
        return lambda: cls(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            **small,
        )

    return {
        "gpt2": (
            tf.GPT2LMHeadModel,
            lambda: tf.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, **small),
        ),
        "gpt_neox": (tf.GPTNeoXForCausalLM, rotary(tf.GPTNeoXConfig)),
        "opt": (
            tf.OPTForCausalLM,
            lambda: tf.OPTConfig(
                hidden_size=32,
                ffn_dim=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                word_embed_proj_dim=32,
                max_position_embeddings=64,
                **small,
            ),
        ),
        "llama_gqa": (tf.LlamaForCausalLM, llama_like(tf.LlamaConfig)),
        "qwen2_gqa": (tf.Qwen2ForCausalLM, llama_like(tf.Qwen2Config)),
        # a window of 4 columns, shorter than the tests' probe windows
        "mistral_window": (tf.MistralForCausalLM, llama_like(tf.MistralConfig, sliding_window=4)),
        "phi": (tf.PhiForCausalLM, rotary(tf.PhiConfig)),
    }
