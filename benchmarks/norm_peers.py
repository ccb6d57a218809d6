"""Fused norm kernels of other libraries that benchmarks/norms.py times beside megadyt's.

- RMSNorm from Transformer Engine or apex (whichever imports first), CUDA only.
- Liger-Kernel's Triton RMSNorm and DyT (`liger_kernel.transformers.LigerRMSNorm`, `LigerDyT`;
  pip install liger-kernel), CUDA only. Called as a user would, with two settings chosen so the
  work matches the other candidates: LigerDyT(beta=False) (megadyt's DyT has no bias) and
  LigerRMSNorm(in_place=False) (the default writes dx into dy, which the benchmark shares
  between candidates; the bytes moved are the same either way).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util

import torch


def _module(name: str):
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - optional baseline
        return None


def rms_fused(device: torch.device, n: int, dtype: torch.dtype, eps: float):
    """(name, module) of a fused RMSNorm from Transformer Engine or apex, if importable."""
    if device.type != "cuda":
        return None
    te = _module("transformer_engine.pytorch")
    if te is not None:
        return "transformer_engine", te.RMSNorm(n, eps=eps, params_dtype=dtype).to(device)
    apex_norm = _module("apex.normalization")
    if apex_norm is not None:
        return "apex", apex_norm.FusedRMSNorm(n, eps=eps).to(device=device, dtype=dtype)
    return None


def liger_status(device: torch.device) -> str:
    """'liger-kernel X.Y.Z' when it runs here, else why not (for the tables and the JSON)."""
    if importlib.util.find_spec("liger_kernel") is None:
        return "not installed"
    version = importlib.metadata.version("liger-kernel")
    if device.type != "cuda":
        return f"liger-kernel {version}: not run (Triton kernels, CUDA only)"
    if _module("liger_kernel.transformers") is None:
        return f"liger-kernel {version}: import failed"
    return f"liger-kernel {version}"


def liger_modules(device: torch.device, n: int, dtype: torch.dtype, eps: float, alpha: float):
    """{'rmsnorm': LigerRMSNorm, 'dyt': LigerDyT} on `device` in `dtype`; {} if unavailable."""
    if device.type != "cuda":
        return {}
    lt = _module("liger_kernel.transformers")
    if lt is None:
        return {}
    rms = lt.LigerRMSNorm(n, eps=eps, in_place=False)
    dyt = lt.LigerDyT(n, beta=False, init_alpha=alpha)
    return {"rmsnorm": rms.to(device, dtype), "dyt": dyt.to(device, dtype)}
