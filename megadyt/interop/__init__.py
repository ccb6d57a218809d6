"""Hugging Face interop: megadyt models as transformers LLaMA directories.

`hf_layout` maps megatron-core's tensors onto transformers' LLaMA names, `hf_config` writes the
matching config, `hf_export` writes the directory (sharded safetensors, config, modeling file),
and `modeling_megadyt.py` is the file a DyT/Derf export carries for `trust_remote_code`.
"""
