"""RecoverSettings: how much and how to train the compiled graph after its passes (no torch here).

``steps`` and ``minutes`` are budgets (0 = none); recovery is on when either is positive and it
stops at whichever is reached first. ``mode`` is ``distill`` (the whole student against the FP32
teacher's outputs) or ``block`` (each block's weights fit to the FP32 block's output, one block at a
time). ``loss`` picks the distillation loss per float output: ``auto`` takes KL divergence for a
rank-2 output (logits) and relative MSE otherwise (embeddings, feature maps).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["RecoverSettings", "MODES", "LOSSES"]

MODES = ("distill", "block")
LOSSES = ("auto", "kl", "mse", "cosine")


@dataclass(frozen=True)
class RecoverSettings:
    steps: int = 0                 # optimizer steps (0: no step budget)
    minutes: float = 0.0           # wall-clock budget (0: none); with steps, whichever ends first
    mode: str = "distill"          # distill | block
    lr: float = 1e-4               # Adam learning rate (cosine decay over ``steps`` when steps are given)
    batch_size: int = 16
    seed: int = 0
    loss: str = "auto"             # auto | kl | mse | cosine
    temperature: float = 1.0       # KL: softmax temperature (the loss is scaled by T^2)
    task_weight: float = 1.0       # weight of the cross-entropy on labels, when the data has labels
    val_fraction: float = 0.125    # held-out share of the data scoring checkpoints (at most 128 samples)
    eval_every: int = 25           # steps between checkpoint scores
    token_mask: str = "auto"       # input [N, S] weighting a [N, S, H] output's positions (auto: attention_mask)

    def __post_init__(self) -> None:
        checks = {"steps": self.steps >= 0, "minutes": self.minutes >= 0, "mode": self.mode in MODES,
                  "lr": self.lr > 0, "batch_size": self.batch_size >= 1, "loss": self.loss in LOSSES,
                  "temperature": self.temperature > 0, "task_weight": self.task_weight >= 0,
                  "val_fraction": 0 <= self.val_fraction < 1, "eval_every": self.eval_every >= 1}
        for key, ok in checks.items():
            if not ok:
                hint = {"mode": f"one of {MODES}", "loss": f"one of {LOSSES}"}.get(key)
                raise ConfigError(f"invalid value {getattr(self, key)!r}", where=f"--recover-{key.replace('_', '-')}",
                                  hint=hint)

    @property
    def enabled(self) -> bool:
        return self.steps > 0 or self.minutes > 0
