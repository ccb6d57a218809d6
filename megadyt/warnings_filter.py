"""The known third-party warnings megadyt silences, in one place, matched by module and message.

Each one below is emitted by a library on every start (at import) or at every model build or
step, says nothing the user can act on in megadyt, and buried our own messages. Filters match
the emitting library's module (the one that calls `warnings.warn`, after its stacklevel) and
the start of the message, so megadyt's own warnings, and other warnings of those libraries,
stay visible. `install()` runs when `megadyt` is imported; pytest resets filters around every
test, so tests/conftest.py hands the same list to pytest (`as_pytest_filters()`).

One more line is not a Python warning but a log record: DeepSpeed's CPU accelerator notice,
dropped by a filter on DeepSpeed's logger where it is expected (`ExpectedCpuAccelerator`).
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import NamedTuple


class KnownWarning(NamedTuple):
    category: type[Warning]
    module: str  # regex matched at the start of the emitting module's name
    message: str  # regex matched at the start of the message (case-insensitive); no ":"
    why: str


KNOWN: list[KnownWarning] = [
    KnownWarning(
        UserWarning,
        r"megatron\.",
        r".*(Apex|Transformer Engine).* not installed",
        "optional GPU extensions missing: megadyt uses its own norms, fused kernels and "
        "megatron-core's local spec, so the fallbacks are the intended path",
    ),
    KnownWarning(
        DeprecationWarning,
        r"megatron\.core\.transformer",
        r"The 'megatron\.core\.transformer\.custom_layers\.transformer_engine'",
        "megatron-core's own multi_latent_attention imports its deprecated module (at import)",
    ),
    KnownWarning(
        DeprecationWarning,
        r"megatron\.core\.inference",
        r"The following imports from `dynamic_context\.py` will be removed",
        "megatron-core's own package __init__ re-exports (at import)",
    ),
    KnownWarning(
        UserWarning,
        r"megatron\.core\.transformer\.transformer_config",
        r"full scope is deprecated",
        "megatron-core's own default cuda_graph_scope='full' (at every TransformerConfig)",
    ),
    KnownWarning(
        DeprecationWarning,
        r"megatron\.core\.",
        r".*tp_group is None, using default tp group",
        "megatron-core's own layers call without tp_group (at every forward of a TP linear)",
    ),
    KnownWarning(
        DeprecationWarning,
        r"megatron\.core\.transformer\.spec_utils",
        r"MLP requires ffn_hidden_size, but it was not provided",
        "megatron-core's own TransformerLayer builds the dense MLP without it and the width "
        "comes from the TransformerConfig, where megadyt sets it (at every model build)",
    ),
    KnownWarning(
        DeprecationWarning,
        r"torch\.jit",
        r"`torch\.jit\.script_method` is deprecated",
        "torch.utils.mkldnn, imported by torch itself, uses it (at import)",
    ),
    KnownWarning(
        FutureWarning,
        r"torch\.distributed\.c10d_logger",
        r"`torch\.distributed\.all_gather_into_tensor` is deprecated",
        "DeepSpeed's ZeRO 1/2 gathers parameters with the collective torch deprecated (at the "
        "first step of every rank)",
    ),
]


class ExpectedCpuAccelerator(logging.Filter):
    """DeepSpeed logs "Setting accelerator to CPU. If you have GPU or other accelerator, we
    were unable to detect it." (to stdout) whenever it finds no CUDA device. Where torch sees
    no CUDA either, the CPU is what megadyt runs on by design (`parallel.cpu_shims`): the line
    says nothing, and came before every error. With CUDA present it stays: then it means a
    GPU was missed."""

    MESSAGE = "Setting accelerator to CPU"

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.MESSAGE):
            return True
        torch = sys.modules.get("torch")  # DeepSpeed imported it before it logs
        return torch is None or torch.cuda.is_available()


def install() -> None:
    """Add the filters to Python's warning filters (idempotent: equal filters are merged), and
    the one log filter on DeepSpeed's logger. Skipped when the user chose filters with -W or
    PYTHONWARNINGS: they asked to see them."""
    if sys.warnoptions:
        return
    for known in KNOWN:
        warnings.filterwarnings(
            "ignore", message=known.message, category=known.category, module=known.module
        )
    deepspeed_log = logging.getLogger("DeepSpeed")  # the logger DeepSpeed creates on import
    if not any(isinstance(f, ExpectedCpuAccelerator) for f in deepspeed_log.filters):
        deepspeed_log.addFilter(ExpectedCpuAccelerator())


def as_pytest_filters() -> list[str]:
    """The same filters as pytest `filterwarnings` lines (action:message:category:module)."""
    return [f"ignore:{k.message}:{k.category.__name__}:{k.module}" for k in KNOWN]
