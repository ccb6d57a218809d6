"""Tokenizer training (LLaMA-style SentencePiece BPE) and loading."""

from __future__ import annotations

import json

import pytest
import sentencepiece as spm

from megadyt.cli.main import main
from megadyt.data.spm import train_tokenizer
from megadyt.data.tokenizer import load_tokenizer
from megadyt.errors import MegadytError

MULTILINGUAL = [
    "The quick brown fox jumps over the lazy dog 0123456789.",
    "日本語のテキストです。中文文本，你好世界。한국어 텍스트입니다.",
    "Emoji: 🎉🚀👨‍👩‍👧 and flags 🇫🇷🇯🇵.",
    "Combining marks: e\u0301 a\u0308 n\u0303 \u0928\u093f \u05e9\u05b8\u05c1",
    "\tTabs\tand\t\ttabs, then a long whitespace run:" + " " * 37 + "end.",
    "def f(x):\n    return {'a': [x, x ** 2]}  # comment\n",
    "Ελληνικά, русский текст, العربية, עברית.",
]
# Not in the training text: every character must still round trip (byte fallback).
UNSEEN = [
    " leading space",
    "  two leading spaces and trailing   ",
    "\n\n\nnewlines only\n",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝟙𝟚𝟛 and rare CJK 𠀋𡈽 and ℌ",
    "ｆｕｌｌ-ｗｉｄｔｈ and non\u00a0breaking\u2009spaces",
    "zero\u200bwidth\u200djoiner \ufeffBOM",
    "",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    corpus = root / "corpus.jsonl"
    with corpus.open("w", encoding="utf-8") as out:
        for i in range(200):
            text = MULTILINGUAL[i % len(MULTILINGUAL)] + f" {i}"
            out.write(json.dumps({"text": text, "meta": {"pile_set_name": "Test"}}) + "\n")
    plain = root / "plain.txt"
    plain.write_text("\n".join(MULTILINGUAL), encoding="utf-8")
    model = root / "tok.model"
    train_tokenizer([str(corpus), str(plain)], 400, str(model), num_threads=1)
    return model


def test_round_trip_multilingual(trained):
    tok = load_tokenizer(str(trained))
    assert tok.vocab_size == 400
    for text in MULTILINGUAL + UNSEEN:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text, repr(text)


def test_llama_style_settings(trained):
    tok = load_tokenizer(str(trained))
    assert (tok.sp.unk_id(), tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, -1)
    # digits are split into single pieces
    pieces = tok.sp.encode("12345", out_type=str)
    assert [p.lstrip("▁") for p in pieces if p.lstrip("▁")] == list("12345")
    # byte fallback: an unseen character becomes byte pieces, not <unk>
    ids = tok.encode("𠀋")
    assert 0 not in ids
    assert all(tok.sp.is_byte(i) for i in ids if tok.sp.id_to_piece(i) != "▁")
    # the file is a plain SentencePiece model any tool can load
    sp = spm.SentencePieceProcessor(model_file=str(trained))
    assert sp.encode(MULTILINGUAL[1]) == tok.encode(MULTILINGUAL[1])


def test_cli_train_tokenizer(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(MULTILINGUAL * 3), encoding="utf-8")
    out = tmp_path / "cli.model"
    rc = main(["train-tokenizer", "--input", str(src), "--vocab-size", "450", "--output", str(out)])
    assert rc == 0
    assert load_tokenizer(str(out)).vocab_size == 450
    assert not list(tmp_path.glob("*.tmp-*"))
    assert "vocab 450" in capsys.readouterr().out


def test_cli_train_tokenizer_errors(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("tiny", encoding="utf-8")
    out = str(tmp_path / "x.model")
    assert (
        main(
            [
                "train-tokenizer",
                "--input",
                str(tmp_path / "nope.txt"),
                "--vocab-size",
                "300",
                "--output",
                out,
            ]
        )
        == 2
    )
    assert "nope.txt" in capsys.readouterr().err
    assert (
        main(["train-tokenizer", "--input", str(src), "--vocab-size", "100", "--output", out]) == 2
    )
    assert "--vocab-size 100" in capsys.readouterr().err
    assert (
        main(
            [
                "train-tokenizer",
                "--input",
                str(src),
                "--vocab-size",
                "300",
                "--output",
                str(tmp_path / "x.bin"),
            ]
        )
        == 2
    )
    assert ".model" in capsys.readouterr().err


def test_load_errors(tmp_path):
    with pytest.raises(MegadytError, match="missing.model.*not found"):
        load_tokenizer(str(tmp_path / "missing.model"))
    bogus = tmp_path / "bogus.model"
    bogus.write_text("this is not a protobuf")
    with pytest.raises(MegadytError, match="bogus.model is not a SentencePiece model"):
        load_tokenizer(str(bogus))
    with pytest.raises(MegadytError, match="builtin:stdlib"):
        load_tokenizer("builtin:nonsense", str(tmp_path))
