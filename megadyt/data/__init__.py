"""megadyt.data: tokenizers, Pile-format corpora, indexed datasets and the built-in corpus.

- `tokenizer`: `load_tokenizer(spec, cache_dir)`, `train_tokenizer(...)` (SentencePiece).
- `pile`: reading Pile-format JSON lines (plain, .zst, .gz), text and `datasets` inputs.
- `prepare`: `prepare_data(...)`, parallel tokenization into megatron-core PREFIX.bin/.idx.
- `builtin`: the stdlib corpus built on first use; `resolve_data(data_cfg)`.
- `datasets`: `build_datasets(cfg, tokenizer, num_samples)`, megatron-core's blended GPTDataset.
- `atomic`: write-then-rename helpers shared by all of them.

Submodules are imported on demand (megatron-core and torch are slow to import).
"""
