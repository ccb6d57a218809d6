"""Hugging Face interop: megadyt models as transformers LLaMA directories, and back.

`hf_layout` maps megatron-core's tensors onto transformers' LLaMA names and back, `hf_config`
writes the matching config, `hf_export` writes the directory (sharded safetensors, config,
modeling file), `hf_tokenizer` the tokenizer.json that gives SentencePiece's ids, and
`hf_import` reads a directory back as megadyt tensors. `modeling_megadyt.py` is the file a
DyT/Derf export carries for `trust_remote_code`. Nothing here builds a model or trains: the
CLI joins these to `training` (`training.checkpoint.initial`, `training.norm_conversion`).
"""
