"""A LoRA GPT-2 whose adapters change the output from the start, for the ``reference="peft_base"`` tests."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

VOCAB = 20


def lora_gpt2_with_live_adapters() -> tuple[torch.nn.Module, Any]:
    """``(plain, lora)``: the base GPT-2 (never wrapped, eval mode) and a LoRA wrapper of the same weights.

    The adapters' B matrices are drawn non-zero, so the adapted model differs from the base at fit start.
    """
    transformers = __import__("transformers")
    peft = __import__("peft")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=1, eos_token_id=1
    )
    base = transformers.GPT2LMHeadModel(cfg)
    plain = copy.deepcopy(base).eval()
    lora = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    return plain, lora


class LoRALM(pl.LightningModule):
    """Trains only the adapters of ``model`` on dict batches with ``input_ids`` and ``labels``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=1e-2)


def causal_lm_row_losses(model: torch.nn.Module, rows: torch.Tensor) -> np.ndarray:
    """Plain-torch mean next-token NLL of each row (no padding)."""
    with torch.no_grad():
        logits = model(input_ids=rows).logits[:, :-1]
    nll = F.cross_entropy(logits.reshape(-1, VOCAB), rows[:, 1:].reshape(-1), reduction="none")
    return nll.view(rows.shape[0], -1).mean(dim=1).numpy()
