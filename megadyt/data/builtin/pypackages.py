"""`builtin:pypackages`: the Python source of the packages megadyt itself installs.

torch, transformers, megatron-core, DeepSpeed, lm-eval, numpy, sympy and the other large
packages in `PACKAGES` hold ~230 MB of real Python code and docstrings (~70M tokens), like The
Pile's GitHub part, with no download: enough to train the tiny models at tens of tokens per
parameter without repeating a document.

What is read, and why:
- The `.py` files each distribution lists in its RECORD, sorted, read as UTF-8. A docstring is
  part of its module's text; unlike `builtin:stdlib` there is no second "docs" document, which
  would repeat that text.
- Skipped: files over 300 KB (generated tables), under 200 characters (stubs), and files that
  fail Codex's filters for code (a line over 1,000 characters, a mean line over 100, under 25%
  alphanumeric characters: minified or data files).
- Identical files (vendored copies, a package's duplicated modules) are kept once, by a hash of
  their text, before the split: no text is in both parts, none is trained on twice.
- Held-out: a module is held out when the hash of `package:path` falls below
  `heldout_fraction` (0.5%, ~65 modules); its status never depends on other modules. Modules
  copied with small edits (transformers' "Copied from" models) still have near-twins in
  training: the held-out part measures unseen files, not unseen content.
- Order: documents are written in the order of that hash, so megatron-core's train/valid/test
  split of the training prefix (contiguous ranges of documents) is a random sample of modules,
  and the tokenizer's sample (the first documents) is one too.

Versions: the cache directory is `pypackages-v1-<digest>`, the digest of every package's name
and installed version (or its absence) and the recipe's parameters; `sources.json` in it lists
them. Machines with the same versions build the same tokens, byte for byte. When the installed
versions change, the digest changes and the corpus is built again in a new directory on first
use; the old one is left as it was (delete it by hand to reclaim its space).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
from dataclasses import dataclass

from megadyt.data.builtin.corpus import Selection, log
from megadyt.data.builtin.stdlib import MAX_MODULE_BYTES, read_source
from megadyt.errors import MegadytError

VERSION = "v1"
# The project's own dependencies and the largest packages they pull in (~230 MB of kept text).
PACKAGES = (
    "accelerate",
    "datasets",
    "deepspeed",
    "huggingface-hub",
    "lm-eval",
    "matplotlib",
    "megatron-core",
    "mpmath",
    "networkx",
    "nltk",
    "numpy",
    "pandas",
    "pyarrow",
    "scikit-learn",
    "scipy",
    "sympy",
    "tensorboard",
    "torch",
    "transformers",
)
FILTERS = {"max_line_chars": 1000, "max_mean_line_chars": 100, "min_alnum_fraction": 0.25}
SET_NAME = "PyPackagesCode"


def canonical(name: str) -> str:
    """PEP 503's normalised distribution name: `Huggingface_Hub` -> `huggingface-hub`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _hash_unit(key: str) -> float:
    """A stable number in [0, 1) for `key`: where it falls in the pseudo-random order."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:15], 16) / 16**15


def _passes_filters(text: str) -> bool:
    lines = text.split("\n")
    if max(len(line) for line in lines) > FILTERS["max_line_chars"]:
        return False
    if len(text) / len(lines) > FILTERS["max_mean_line_chars"]:
        return False
    alnum = sum(ch.isalnum() for ch in text)
    return alnum >= FILTERS["min_alnum_fraction"] * len(text)


def _module(path: str) -> str:
    return path[: -len(".py")].replace("/", ".").removesuffix(".__init__")


@dataclass(frozen=True)
class Package:
    name: str  # canonical
    version: str | None  # None: not installed
    files: tuple[tuple[str, str], ...] = ()  # (RECORD path, absolute path) of its .py files


def find_package(name: str) -> Package:
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return Package(canonical(name), None)
    listed = sorted(str(f) for f in dist.files or [])
    files = tuple(
        (rel, str(dist.locate_file(rel)))
        for rel in listed
        if rel.endswith(".py") and not rel.startswith("..")
    )
    return Package(canonical(name), dist.version, files)


@dataclass(frozen=True)
class PackagesRecipe:
    packages: tuple[str, ...] = PACKAGES
    heldout_fraction: float = 0.005
    tokenizer_sample_chars: int | None = 24_000_000  # ~10%: enough for a 4,096-piece BPE
    name: str = "pypackages"
    workers: int = 16
    tokenizer_sample_lines: int = 4_000_000  # above the sample's line count: no resampling

    def inventory(self) -> list[Package]:
        return [find_package(name) for name in sorted({canonical(p) for p in self.packages})]

    def digest(self, inventory: list[Package] | None = None) -> str:
        """What the documents and tokenizer depend on, hashed: package versions, parameters."""
        inventory = self.inventory() if inventory is None else inventory
        spec = {
            "version": VERSION,
            "packages": [[p.name, p.version] for p in inventory],
            "filters": FILTERS,
            "max_module_bytes": MAX_MODULE_BYTES,
            "heldout_fraction": self.heldout_fraction,
            "tokenizer_sample_chars": self.tokenizer_sample_chars,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def tag(self) -> str:
        return f"{self.name}-{VERSION}-{self.digest()[:12]}"

    def estimate_bytes(self) -> int:
        """JSON lines (text plus escapes, ~1.1x), tokens (2 bytes each, ≤ 1x) and temporaries."""
        sizes = [os.path.getsize(path) for p in self.inventory() for _, path in p.files]
        return int(2.5 * sum(size for size in sizes if size <= MAX_MODULE_BYTES))

    def select(self) -> Selection:
        inventory = self.inventory()
        if not any(p.version for p in inventory):
            raise MegadytError(
                f"none of the packages of builtin:{self.name} is installed "
                f"({', '.join(p.name for p in inventory)}); install megadyt's dependencies"
            )
        seen: set[bytes] = set()
        kept: list[tuple[float, str, dict]] = []
        dropped = {"unreadable_or_size": 0, "duplicate": 0, "filtered": 0}
        packages = []
        for package in inventory:
            if package.version is None:
                log(f"{self.name}: {package.name} is not installed; built without it")
                packages.append({"name": package.name, "version": None})
                continue
            files = chars = 0
            for rel, path in package.files:
                text = read_source(path)
                if text is None:
                    dropped["unreadable_or_size"] += 1
                    continue
                content = hashlib.sha256(text.encode()).digest()
                if content in seen:
                    dropped["duplicate"] += 1
                    continue
                seen.add(content)
                if not _passes_filters(text):
                    dropped["filtered"] += 1
                    continue
                key = f"{package.name}:{rel}"
                meta = {"pile_set_name": SET_NAME, "package": package.name, "module": _module(rel)}
                kept.append((_hash_unit(key), key, {"text": text, "meta": meta}))
                files, chars = files + 1, chars + len(text)
            log(
                f"{self.name}: read {package.name} {package.version}: {len(package.files):,} "
                f".py files, kept {files:,} ({chars / 1e6:,.1f}M characters)"
            )
            packages.append({"name": package.name, "version": package.version, "kept": files})
        return self._split(kept, packages, dropped, inventory)

    def _split(self, kept, packages, dropped, inventory) -> Selection:
        kept.sort(key=lambda item: (item[0], item[1]))
        train = [record for unit, _, record in kept if unit >= self.heldout_fraction]
        heldout = [(key, record) for unit, key, record in kept if unit < self.heldout_fraction]
        if not train or not heldout:
            raise MegadytError(
                f"builtin:{self.name} found {len(kept)} modules: too few for a training and a "
                "held-out part; install megadyt's dependencies"
            )
        record = {
            "corpus": self.name,
            "version": VERSION,
            "digest": self.digest(inventory),
            "packages": packages,
            "filters": FILTERS,
            "heldout_fraction": self.heldout_fraction,
            "tokenizer_sample_chars": self.tokenizer_sample_chars,
            "dropped": dropped,
            "train_documents": len(train),
            "train_characters": sum(len(r["text"]) for r in train),
            "heldout_modules": [key for key, _ in heldout],
        }
        log(
            f"{self.name}: {len(kept):,} modules kept ({dropped['duplicate']:,} duplicates, "
            f"{dropped['filtered']:,} filtered, {dropped['unreadable_or_size']:,} too small, "
            f"large or unreadable dropped); {len(heldout):,} held out"
        )
        return Selection(train, [r for _, r in heldout], record)
