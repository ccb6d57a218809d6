"""Launch planning: per-device memory model, FLOPs and step time, and layout suggestions.

Submodules: `memory` (the memory model), `checkpoint` (checkpoint size and save time), `plan`
(make_plan, suggest); the CLI is `megadyt plan`
(whose `--print run_dir|run_name` gives the launch scripts config values without importing
torch). Names below are loaded on first use, as `plan` imports torch through the model code.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CheckpointEstimate": "checkpoint",
    "checkpoint_estimate": "checkpoint",
    "MemoryBreakdown": "memory",
    "memory_breakdown": "memory",
    "DoesNotFit": "plan",
    "LayoutError": "plan",
    "Plan": "plan",
    "make_plan": "plan",
    "suggest": "plan",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"megadyt.planning.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
