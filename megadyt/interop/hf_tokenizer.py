"""A Hugging Face `tokenizer.json` that gives a megadyt SentencePiece model's ids exactly.

transformers' own conversion (`LlamaTokenizer`) rebuilds the pre-tokenization from its legacy
flags and splits text that starts with a space differently from SentencePiece. Built directly
with `tokenizers` instead, from the same vocabulary and merges (transformers'
`SentencePieceExtractor`), it matches SentencePiece's `add_dummy_prefix` model:
- the normalizer prepends the word-start marker "▁" and turns every space into "▁" (no
  pre-tokenizer: SentencePiece does not split on whitespace either);
- BPE with byte fallback (characters outside the vocabulary become <0xNN> pieces) and `fuse_unk`;
- decoding undoes both: "▁" to space, bytes fused back, the one prepended space stripped;
- nothing is added around the text (no BOS), as megadyt trains: documents are separated by EOS,
  which is also the prefix token for scoring (lm-eval's `prefix_token_id`).

The special pieces are registered but, with `split_special_tokens` (tokenizer_config.json; a
user of the bare `tokenizers` library sets `encode_special_tokens`), a literal "</s>" in a text
is spelled out as SentencePiece does instead of becoming the EOS id. `first_difference` is the
check `write_tokenizer_files` runs before it writes anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from megadyt.errors import MegadytError

WORD_START = "▁"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# strings the held-out corpus may lack: leading/trailing/repeated spaces, byte fallback,
# digits, control characters, empty text, and literal special-piece spellings
EDGE_CASES = (
    "",
    " ",
    "  two leading spaces",
    "trailing  ",
    "\ttab\n\nnew lines\r\n",
    "12345 67.89e-10",
    "héllo wörld ß∑≈ 中文 🙂",
    "a\u0000b\u200bc",
    "x </s> y <s> <unk>",
)


def build_hf_tokenizer(model_path: str):
    """A `tokenizers.Tokenizer` equivalent to the SentencePiece BPE model at `model_path`."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    _check_model_kind(model_path)
    processor = spm.SentencePieceProcessor(model_file=model_path)
    extracted = SentencePieceExtractor(model_path).extract(models.BPE)
    unk = processor.id_to_piece(processor.unk_id())
    bpe = models.BPE(
        vocab=extracted["vocab"],
        merges=extracted["merges"],
        unk_token=unk,
        byte_fallback=True,
        fuse_unk=True,
    )
    tokenizer = Tokenizer(bpe)
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend(WORD_START), normalizers.Replace(" ", WORD_START)]
    )
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace(WORD_START, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    special = [i for i in range(processor.get_piece_size()) if processor.IsControl(i)]
    special.append(processor.unk_id())
    tokenizer.add_special_tokens(
        [AddedToken(processor.id_to_piece(i), special=True, normalized=False) for i in special]
    )
    tokenizer.encode_special_tokens = True  # literal "</s>" in text stays text
    return tokenizer


def _check_model_kind(model_path: str) -> None:
    """Refuse what this conversion does not reproduce and a text check might miss: a model
    that is not BPE, or that normalises text (NFKC folds e.g. full-width letters) or collapses
    whitespace. megadyt's and LLaMA's models are identity-normalised BPE with a dummy prefix."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(model_path, "rb") as handle:
        proto.ParseFromString(handle.read())
    spec, kind = proto.normalizer_spec, proto.trainer_spec.model_type
    if (
        kind != sentencepiece_model_pb2.TrainerSpec.BPE
        or spec.name != "identity"
        or (spec.remove_extra_whitespaces or not spec.add_dummy_prefix)
    ):
        raise MegadytError(
            f"tokenizer {model_path} is not an identity-normalised BPE model with a dummy prefix "
            f"(model type {kind}, normalizer {spec.name!r}); export it with --no-tokenizer"
        )


def first_difference(tokenizer, processor, texts: Iterable[str]) -> str | None:
    """The first text whose ids (or decoded ids) differ from those of `processor` (a loaded
    SentencePieceProcessor), described in a line; None when all agree."""
    texts = list(texts)
    for text, encoding in zip(texts, tokenizer.encode_batch(texts, add_special_tokens=False)):
        expected = processor.encode(text)
        if encoding.ids != expected:
            at = next(
                (i for i, (a, b) in enumerate(zip(encoding.ids, expected)) if a != b),
                min(len(encoding.ids), len(expected)),
            )
            return f"{text[:40]!r}... is tokenized differently from token {at} on"
        if tokenizer.decode(expected, skip_special_tokens=False) != processor.decode(expected):
            return f"{text[:40]!r}... decodes differently"
    return None


def tokenizer_config(processor, max_length: int) -> dict:
    """tokenizer_config.json: the generic fast tokenizer over tokenizer.json (not
    LlamaTokenizer, which would rebuild the pre-tokenization), no BOS/EOS added."""

    def piece(i: int) -> str | None:
        return processor.id_to_piece(i) if i >= 0 else None

    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": piece(processor.bos_id()),
        "eos_token": piece(processor.eos_id()),
        "unk_token": piece(processor.unk_id()),
        "pad_token": piece(processor.pad_id()),
        "add_bos_token": False,
        "add_eos_token": False,
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        "megadyt_prefix_token": piece(processor.eos_id()),
    }


def write_tokenizer_files(
    folder: Path, model_path: str, check_texts: Iterable[str], max_length: int
) -> int:
    """Build, check against SentencePiece on `check_texts` (plus `EDGE_CASES`), then write
    tokenizer.json and tokenizer_config.json into `folder`; returns the number of texts
    checked. A difference is a MegadytError and nothing is written."""
    import sentencepiece as spm
    from tokenizers import Tokenizer

    processor = spm.SentencePieceProcessor(model_file=model_path)
    built = build_hf_tokenizer(model_path)
    # check what is written: the JSON read back (`encode_special_tokens` is not saved in it;
    # transformers sets it from tokenizer_config's `split_special_tokens`)
    tokenizer = Tokenizer.from_str(built.to_str())
    tokenizer.encode_special_tokens = True
    texts = [*EDGE_CASES, *check_texts]
    difference = first_difference(tokenizer, processor, texts)
    if difference is not None:
        raise MegadytError(
            f"the Hugging Face tokenizer built from {model_path} differs from SentencePiece: "
            f"{difference}; export with --no-tokenizer and tokenize with SentencePiece"
        )
    tokenizer.save(str(folder / TOKENIZER_FILE))
    config = tokenizer_config(processor, max_length)
    (folder / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return len(texts)
