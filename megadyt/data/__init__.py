"""megadyt.data: tokenizers, Pile-format corpora, indexed datasets and the built-in corpus.

Modules, lowest first (each imports only those above it):
- `pile`: reading Pile-format JSON lines (plain, .zst, .gz), text and `datasets` inputs.
- `spm`: `Tokenizer` (a SentencePiece .model), `train_sentencepiece`, `train_tokenizer`.
- `lifeline`: `exit_with_parent(pid)`, pool workers that end quietly with their parent.
- `prepare`: `prepare_data(...)`, parallel tokenization into megatron-core PREFIX.bin/.idx.
- `builtin`: the built-in corpora (`builtin:stdlib`, `builtin:pypackages`) and their tokenizers,
  built on first use; `tokenizer_model_path(spec)` (the one place a tokenizer spec is
  resolved) and `resolve_data(data_cfg)`.
- `integrity`: `check_indexed_dataset(prefix)`, the cheap structural check of a PREFIX.idx/.bin
  pair that training runs before megatron-core opens it.
- `tokenizer`: `load_tokenizer(spec, cache_dir)`, a `.model` file or `builtin:NAME`.
- `datasets`: `build_datasets(cfg, tokenizer, num_samples)`, megatron-core's blended GPTDataset.
Outputs are written with `megadyt.atomic` (write to a temporary name, then rename).

Submodules are imported on demand (megatron-core and torch are slow to import).
"""
