"""The embedded stdlib corpus: built on first use, reused, atomic, held-out part kept apart."""

from __future__ import annotations

import json
import os
import time

import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megadyt.cli.main import main
from megadyt.config.schema import DataConfig
from megadyt.data import builtin
from megadyt.data.builtin import resolve_data
from megadyt.data.tokenizer import load_tokenizer
from megadyt.errors import MegadytError


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("builtin_cache"))
    start = time.perf_counter()
    prefixes, tok_path = resolve_data(DataConfig(cache_dir=cache))
    seconds = time.perf_counter() - start
    print(f"built-in stdlib data built from scratch in {seconds:.1f} s")
    return cache, prefixes, tok_path


def _jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_builds_tokenizer_and_dataset(built):
    cache, prefixes, tok_path = built
    assert len(prefixes) == 1 and tok_path.endswith("tokenizer.model")
    tok = load_tokenizer("builtin:stdlib", cache)
    assert tok.model_path == tok_path and tok.vocab_size == builtin.VOCAB_SIZE
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    dataset = IndexedDataset(prefixes[0])
    files = builtin.ensure_stdlib_corpus(cache)
    records = _jsonl(files.train_jsonl)
    assert len(dataset) == len(records) > 100
    assert sum(len(r["text"]) for r in records) > 2_000_000  # a few MB of real text
    for i in (0, len(records) // 2, len(records) - 1):
        assert dataset[i].tolist() == tok.encode(records[i]["text"]) + [tok.eos_id]
        assert tok.decode(dataset[i][:-1].tolist()) == records[i]["text"]


def test_corpus_is_pile_format_with_heldout_modules(built):
    cache, _, _ = built
    files = builtin.ensure_stdlib_corpus(cache)
    train, heldout = _jsonl(files.train_jsonl), _jsonl(files.heldout_jsonl)
    kinds = {r["meta"]["pile_set_name"] for r in train}
    assert kinds == {"StdlibCode", "StdlibDocs"}
    train_modules = {r["meta"]["module"] for r in train}
    heldout_modules = {r["meta"]["module"] for r in heldout}
    assert len(heldout_modules) == builtin.HELDOUT_MODULES
    assert not train_modules & heldout_modules
    train_texts = {r["text"] for r in train}
    assert not any(r["text"] in train_texts for r in heldout)
    code = [r for r in train if r["meta"]["pile_set_name"] == "StdlibCode"]
    looks_like_code = [("def " in r["text"] or "import " in r["text"]) for r in code]
    assert sum(looks_like_code) >= 0.9 * len(code)
    assert all(len(r["text"].strip()) >= builtin.MIN_MODULE_CHARS for r in code)


def test_heldout_prefix_is_separate(built):
    cache, prefixes, tok_path = built
    both, _ = resolve_data(
        DataConfig(cache_dir=cache, prefixes=["builtin:stdlib", "builtin:stdlib-heldout"])
    )
    assert both[0] == prefixes[0] and both[1] != prefixes[0]
    heldout = IndexedDataset(both[1])
    files = builtin.ensure_stdlib_corpus(cache)
    assert len(heldout) == len(_jsonl(files.heldout_jsonl))


def test_reused_when_complete_rebuilt_when_missing(built):
    cache, prefixes, tok_path = built
    idx = prefixes[0] + ".idx"
    stamps = {p: os.stat(p).st_mtime_ns for p in (idx, prefixes[0] + ".bin", tok_path)}
    again = resolve_data(DataConfig(cache_dir=cache))
    assert again == (prefixes, tok_path)
    assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps  # nothing rewritten
    old_idx, old_bin = open(idx, "rb").read(), open(prefixes[0] + ".bin", "rb").read()
    os.remove(idx)  # as if a build had died before its last rename
    assert resolve_data(DataConfig(cache_dir=cache)) == (prefixes, tok_path)
    assert open(idx, "rb").read() == old_idx
    assert open(prefixes[0] + ".bin", "rb").read() == old_bin
    assert not [n for n in os.listdir(os.path.dirname(idx)) if ".tmp-" in n]


def test_prepare_data_cli_builtin_matches(built, tmp_path, capsys):
    cache, prefixes, _ = built
    heldout, _ = resolve_data(DataConfig(cache_dir=cache, prefixes=["builtin:stdlib-heldout"]))
    out = str(tmp_path / "heldout")
    args = ["prepare-data", "--input", "builtin:stdlib-heldout", "--tokenizer", "builtin:stdlib"]
    rc = main([*args, "--cache-dir", cache, "--output-prefix", out, "--workers", "2", "--quiet"])
    assert rc == 0
    for suffix in (".bin", ".idx"):
        assert open(out + suffix, "rb").read() == open(heldout[0] + suffix, "rb").read()
    assert main(["prepare-data", "--input", "builtin:nope", "--output-prefix", out]) == 2
    assert "builtin:nope" in capsys.readouterr().err


def test_errors_name_the_culprit(built, tmp_path):
    cache, _, tok_path = built
    missing = str(tmp_path / "pile" / "train")
    with pytest.raises(MegadytError, match=f"{missing}.*not found.*prepare-data"):
        resolve_data(DataConfig(cache_dir=cache, prefixes=[missing]))
    os.makedirs(tmp_path / "pile")
    open(missing + ".bin", "wb").close()  # .bin without .idx: an unfinished dataset
    with pytest.raises(MegadytError, match=r"train\.idx not found"):
        resolve_data(DataConfig(cache_dir=cache, prefixes=[missing]))
    with pytest.raises(MegadytError, match="unknown built-in dataset 'builtin:pile'"):
        resolve_data(DataConfig(cache_dir=cache, prefixes=["builtin:pile"]))
    with pytest.raises(MegadytError, match="data.tokenizer file .*nope.model"):
        resolve_data(DataConfig(cache_dir=cache, tokenizer=str(tmp_path / "nope.model")))
    # a custom tokenizer works with the built-in corpus: tokenized again, in its own folder
    prefixes, path = resolve_data(DataConfig(cache_dir=cache, tokenizer=tok_path))
    assert path == tok_path and os.path.exists(prefixes[0] + ".idx")
