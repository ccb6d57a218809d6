"""DeepSpeed's ds_to_universal, run unchanged on a megatron-core model's checkpoint.

    python -m megadyt.training.universal_convert --input_folder IN --output_folder OUT ...

The tool copies every entry of a model-state file's `module` dict as a tensor. megatron-core's
parallel linear layers add `NAME._extra_state` entries whose value is None (kept for Transformer
Engine compatibility; they carry nothing), and the tool fails on them ("'NoneType' object has no
attribute 'float'"). Here `torch.load` drops exactly those entries from what the tool reads; the
checkpoint files are not changed, and a universal load never reads `_extra_state`
(DeepSpeed restores the weights from the converted fp32 copies). `training.reshard` runs this.
"""

from __future__ import annotations

import torch

_torch_load = torch.load


def _load_without_empty_extra_state(*args, **kwargs):
    state = _torch_load(*args, **kwargs)
    module = state.get("module") if isinstance(state, dict) else None
    if isinstance(module, dict):
        for key in [k for k, v in module.items() if v is None and k.endswith("._extra_state")]:
            del module[key]
    return state


def main() -> None:
    from deepspeed.checkpoint import ds_to_universal

    torch.load = _load_without_empty_extra_state  # this process only: it exists for the tool
    ds_to_universal.main(ds_to_universal.parse_arguments())


if __name__ == "__main__":
    main()
