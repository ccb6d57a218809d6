"""Turning a pretrained RMSNorm model into a DyT/Derf one (`megadyt import-hf --norm dyt`).

Each RMSNorm computes γ·x/rms(x); its DyT replacement computes γ·tanh(αx) (Derf: γ·erf(αx+s)).
For inputs in tanh's linear range that is γ·αx, so the replacement keeps γ and needs α close
to 1/rms of what the norm sees, which calibration measures (`norms.calibration`: α = c/std of
each norm's input on one micro-batch, in forward order, every later norm measured downstream of
the already converted ones). Everything else starts where it changes nothing: β = 0, Derf's
s = 0, and the embedding scalar, which the RMSNorm model never had, at 1. What is left is the
difference between a per-token normalisation and one fixed scale per norm; the trainer's own
validation loss (`Evaluator`) of the original and the converted model says how large it is
before any training.
"""

from __future__ import annotations

# parameters an RMSNorm model does not have, and the value that leaves its function unchanged
# (α is calibrated afterwards; 1 is only its placeholder)
NEUTRAL_VALUES = {"alpha": 1.0, "shift": 0.0, "bias": 0.0, "embedding_scale": 1.0}


def neutral_value(name: str) -> float | None:
    """The value that leaves an RMSNorm model's function unchanged for parameter `name`, which
    the RMSNorm model lacks (None: it should have had it)."""
    return NEUTRAL_VALUES.get(name.rsplit(".", 1)[-1])
