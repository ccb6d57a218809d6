"""Training data: megatron-core's blended GPT datasets over indexed-dataset prefixes.

`build_datasets` hands the blend (`data.prefixes` resolved, `data.weights`), the split string,
the sequence length and the seed to megatron-core's `BlendedMegatronDatasetBuilder` with
`GPTDataset`; megatron-core builds (rank 0 first) and caches the document/sample/shuffle
indices under `data.cache_dir/megatron_index`, so the same seed gives the same samples and a
resumed run sees the same order. The validation split's documents are fixed by the split
string; which samples are cut from them follows the seed (`data.valid_seed` can pin it).
Each sample is a dict of "tokens" and "labels" (int64 [seq_length]), "loss_mask" (float
[seq_length]) and "position_ids"; no attention mask is materialised (the model builds its
causal mask). Each prefix is first checked for damage
(`megadyt.data.integrity`) and for token ids beyond the tokenizer's vocabulary.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from megadyt.config.schema import Config
from megadyt.config.validate import check_data_weights
from megadyt.data.builtin import resolve_data
from megadyt.data.integrity import check_indexed_dataset, document_count
from megadyt.data.spm import Tokenizer
from megadyt.errors import MegadytError

SCAN_TOKENS = 1 << 22  # tokens read from each end of a .bin to check ids against the vocab


class MegatronTokenizerAdapter:
    """The attributes megatron-core's GPTDataset reads from a tokenizer (`eod`, `pad`, ...).

    `pad` is -1 (LLaMA models have no pad piece), which can never collide with a real id, so
    megatron-core never masks real tokens as padding.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.vocab_size = int(tokenizer.vocab_size)
        self.eod = self.eos = int(tokenizer.eos_id)
        self.bos = int(tokenizer.bos_id)
        self.pad = -1
        model_path = getattr(tokenizer, "model_path", None)
        digest = ""
        if model_path and os.path.isfile(model_path):
            with open(model_path, "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()[:16]
        # Part of megatron-core's cache key: same model file -> same cached indices.
        self.unique_identifiers = {
            "class": "megadyt.SentencePiece",
            "sha256": digest,
            "vocab_size": self.vocab_size,
            "eod": self.eod,
        }

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def detokenize(self, ids) -> str:
        return self.tokenizer.decode(ids)


def check_token_ids(prefix: str, dtype: type[np.integer], limit: int, key: str) -> None:
    """Raise if ids in `prefix` (tokens of `dtype`) reach `limit` (read from both ends of the
    .bin: cheap)."""
    if os.path.getsize(prefix + ".bin") == 0:  # np.memmap cannot map an empty file
        raise MegadytError(f"dataset {prefix!r} holds no tokens; prepare it again")
    tokens = np.memmap(prefix + ".bin", dtype=dtype, mode="r")
    top = max(int(tokens[:SCAN_TOKENS].max()), int(tokens[-SCAN_TOKENS:].max()))
    if top >= limit:
        raise MegadytError(
            f"dataset {prefix!r} contains token id {top} >= {limit}, {key}: it was prepared "
            "with a different tokenizer; prepare it again with data.tokenizer"
        )


SPLIT_NAMES = ("train", "validation", "test")


def check_split_has_documents(prefix: str, split: str, sizes: list[int]) -> None:
    """Each split that samples are drawn from gets at least one document of `prefix`, the way
    megatron-core cuts it; an empty one would make megatron-core loop forever counting epochs."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    documents = document_count(prefix)
    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    for name, bounds, wanted in zip(SPLIT_NAMES, matrix, sizes, strict=True):
        if wanted <= 0 or bounds is None:
            continue
        begin, end = (int(round(b * documents)) for b in bounds)
        if end <= begin:
            raise MegadytError(
                f"data.split {split!r} leaves the {name} split no document of {prefix!r} "
                f"({documents} documents); give that split a larger share or use more data"
            )


def build_datasets(cfg: Config, tokenizer: Tokenizer, num_samples: tuple[int, int, int]) -> tuple:
    """(train, valid, test) megatron-core datasets for `cfg` (call on every rank, after
    torch.distributed is initialised; rank 0 builds the index caches first).

    `num_samples` are the sample counts wanted per split (megatron-core repeats epochs to reach
    them); a split whose share in `data.split` is 0 comes back as None. The validation split is
    drawn with `data.valid_seed` when set (else train.seed), so runs of different seeds can be
    scored on the same validation samples.
    """
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise MegadytError(
            f"the tokenizer's vocabulary ({tokenizer.vocab_size}, data.tokenizer="
            f"{cfg.data.tokenizer}) is larger than model.vocab_size ({cfg.model.vocab_size}); "
            f"set model.vocab_size >= {tokenizer.vocab_size}"
        )
    prefixes, _ = resolve_data(cfg.data)  # cheap when already built: only checks files
    weights = cfg.data.weights
    check_data_weights(prefixes, weights)
    vocab_key = (
        f"the vocabulary size of data.tokenizer ({tokenizer.vocab_size}; model.vocab_size is "
        f"{cfg.model.vocab_size})"
    )
    for prefix in prefixes:
        dtype = check_indexed_dataset(prefix)  # damage: one line here, not a traceback later
        check_token_ids(prefix, dtype, tokenizer.vocab_size, vocab_key)

    sizes = [int(n) for n in num_samples]
    for prefix in prefixes:
        check_split_has_documents(prefix, cfg.data.split, sizes)
    train, valid, test = _build_splits(cfg, prefixes, weights, tokenizer, sizes, cfg.train.seed)
    valid_seed = cfg.data.valid_seed
    if valid_seed is not None and valid_seed != cfg.train.seed and sizes[1] > 0:
        # the validation samples of another seed; the other splits of that build are unused
        _, valid, _ = _build_splits(cfg, prefixes, weights, tokenizer, [0, sizes[1], 0], valid_seed)
    return train, valid, test


def _build_splits(cfg: Config, prefixes, weights, tokenizer, sizes: list[int], seed: int):
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=cfg.model.seq_length,
        blend=(prefixes, list(weights) if weights is not None else None),
        split=cfg.data.split,
        path_to_cache=os.path.join(os.path.abspath(cfg.data.cache_dir), "megatron_index"),
        tokenizer=MegatronTokenizerAdapter(tokenizer),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        mid_level_dataset_surplus=0.005,
    )
    try:
        return BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()
    except AssertionError as exc:
        raise MegadytError(
            f"megatron-core could not build the datasets from {prefixes} with split "
            f"{cfg.data.split!r} ({exc}); a split share may be too small for the data"
        ) from exc
