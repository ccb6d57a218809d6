"""The builder of `builtin:pypackages` on a small slice: deterministic to the byte, a held-out
part disjoint from training, a directory per set of package versions, a refusal on a full disk.

The slice is three small packages megadyt's install brings (idna, packaging, click: ~1 MB of
code); the version test installs throwaway distributions into a temporary folder on sys.path,
which importlib.metadata finds like any other.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megadyt.config import load_config
from megadyt.data.builtin import SPECS
from megadyt.data.builtin.corpus import DISK_MARGIN, ensure_corpus, ensure_dataset, ensure_tokenizer
from megadyt.data.builtin.pypackages import PackagesRecipe
from megadyt.data.spm import Tokenizer
from megadyt.errors import MegadytError

SLICE = PackagesRecipe(
    packages=("idna", "packaging", "click"), heldout_fraction=0.15, tokenizer_sample_chars=600_000
)


def _jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _build(cache: str) -> dict[str, bytes]:
    """Every file of a complete build of SLICE under `cache`, by relative path."""
    model = ensure_tokenizer(SLICE, cache)
    for part in ("train", "heldout"):
        ensure_dataset(SLICE, cache, model, part)
    out = {}
    for dirpath, _, names in os.walk(cache):
        for name in names:
            if name != ".lock":
                path = os.path.join(dirpath, name)
                out[os.path.relpath(path, cache)] = open(path, "rb").read()
    return out


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    first, second = (str(tmp_path_factory.mktemp(name)) for name in ("first", "second"))
    return first, _build(first), _build(second)


def test_two_builds_are_identical_and_within_the_estimate(two_builds):
    cache, first, second = two_builds
    names = sorted(os.path.basename(n) for n in first)
    assert {"train.jsonl", "heldout.jsonl", "sources.json", "tokenizer.model"} <= set(names)
    assert sum(n.endswith((".bin", ".idx")) for n in names) == 4
    assert first.keys() == second.keys()
    assert [n for n in first if first[n] != second[n]] == []
    assert sum(len(data) for data in first.values()) <= SLICE.estimate_bytes()
    sources = json.loads(next(v for k, v in first.items() if k.endswith("sources.json")))
    assert [p["name"] for p in sources["packages"]] == ["click", "idna", "packaging"]
    assert all(p["version"] and p["kept"] > 0 for p in sources["packages"])
    assert sources["digest"].startswith(SLICE.tag().rsplit("-", 1)[1])


def test_tokens_are_the_documents_and_heldout_is_disjoint(two_builds):
    cache, _, _ = two_builds
    files = ensure_corpus(SLICE, cache)
    train, heldout = _jsonl(files.train_jsonl), _jsonl(files.heldout_jsonl)
    assert len(train) > 30 and len(heldout) >= 3
    key = lambda r: (r["meta"]["package"], r["meta"]["module"])  # noqa: E731
    assert not {key(r) for r in train} & {key(r) for r in heldout}
    texts = [r["text"] for r in train + heldout]
    assert len(set(texts)) == len(texts)  # no text twice, in or across the parts
    assert {r["meta"]["pile_set_name"] for r in train} == {"PyPackagesCode"}
    sources = json.loads(open(files.sources_json).read())
    assert sources["heldout_modules"] and len(sources["heldout_modules"]) == len(heldout)
    tokenizer = Tokenizer(ensure_tokenizer(SLICE, cache))
    assert tokenizer.vocab_size == 4096
    for part, records in (("train", train), ("heldout", heldout)):
        dataset = IndexedDataset(ensure_dataset(SLICE, cache, tokenizer.model_path, part))
        assert len(dataset) == len(records)
        for i in (0, len(records) - 1):
            assert dataset[i].tolist() == tokenizer.encode(records[i]["text"]) + [2]


def _install(site, name: str, version: str, modules: dict[str, str]) -> None:
    """A distribution as pip leaves it: the package's files and a dist-info with RECORD."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    for rel, text in modules.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    listed = [*modules, f"{info.name}/METADATA"]  # only the .py files are read
    (info / "RECORD").write_text("".join(f"{rel},,\n" for rel in listed))


def _code(i: int) -> str:
    return "".join(f'def f{i}_{n}(x):\n    """Add {n}."""\n    return x + {n}\n' for n in range(20))


def test_other_versions_build_another_directory(tmp_path, monkeypatch):
    site = tmp_path / "site-1.0"
    modules = {f"megafake/m{i}.py": _code(i) for i in range(40)}
    modules["megafake/copy.py"] = _code(3)  # a duplicate of m3: kept once
    modules["megafake/table.py"] = "T = [" + ", ".join(["1234567"] * 400) + "]\n"  # data
    _install(site, "megafake", "1.0", modules)
    monkeypatch.syspath_prepend(str(site))
    recipe = PackagesRecipe(packages=("megafake", "megafake-absent"), heldout_fraction=0.2)
    cache = str(tmp_path / "cache")
    old = ensure_corpus(recipe, cache)
    sources = json.loads(open(old.sources_json).read())
    assert sources["packages"] == [
        {"name": "megafake", "version": "1.0", "kept": 40},
        {"name": "megafake-absent", "version": None},
    ]
    assert sources["dropped"] == {"unreadable_or_size": 0, "duplicate": 1, "filtered": 1}
    old_train = open(old.train_jsonl, "rb").read()
    # the same sources again: the same directory, reused as it is
    assert ensure_corpus(recipe, cache) == old
    # another environment has megafake 1.1: another digest, another directory; the old stays
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(site)])
    _install(tmp_path / "site-1.1", "megafake", "1.1", modules)
    monkeypatch.syspath_prepend(str(tmp_path / "site-1.1"))
    new = ensure_corpus(recipe, cache)
    assert new.root != old.root and os.path.basename(new.root).startswith("pypackages-v1-")
    assert json.loads(open(new.sources_json).read())["packages"][0]["version"] == "1.1"
    assert open(old.train_jsonl, "rb").read() == old_train


def test_a_too_small_disk_is_refused_before_anything_is_written(tmp_path):
    cache = str(tmp_path / "cache")
    needed = SLICE.estimate_bytes() + DISK_MARGIN
    with pytest.raises(MegadytError) as info:
        ensure_corpus(SLICE, cache, free_bytes=lambda path: needed - 1)
    message = str(info.value)
    assert "\n" not in message and "not enough disk space" in message
    assert "builtin:pypackages" in message and cache in message and "data.cache_dir" in message
    built = [n for _, _, names in os.walk(cache) for n in names if n != ".lock"]
    assert built == []
    files = ensure_corpus(SLICE, cache, free_bytes=lambda path: needed)  # enough: it builds
    assert os.path.isfile(files.train_jsonl)


def test_tiny_configs_take_the_corpus_by_name():
    assert SPECS["builtin:pypackages"] == ("pypackages", "train")
    assert SPECS["builtin:pypackages-heldout"] == ("pypackages", "heldout")
    sets = ["data.prefixes=[builtin:pypackages]", "data.tokenizer=builtin:pypackages"]
    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs/tiny/dyt.yaml"), sets)
    assert (cfg.data.prefixes, cfg.data.tokenizer) == (["builtin:pypackages"], "builtin:pypackages")
    assert cfg.model.vocab_size == 4096
