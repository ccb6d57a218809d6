"""Where commands write (issue #29, items 2 and 4): an output that cannot be written is one
line and exit 2 at start-up, before anything is loaded, from every command that writes; and
`megadyt export` replaces no file unasked.

The commands run in this process (`megadyt.cli.main.main`) on real inputs: one tiny trained
run, a small JSONL file, the built-in tokenizer. Unwritable places: a path under an existing
file (anyone can make one), a read-only bind mount (needs root and `mount`), a directory
without write permission (needs a user the permission bits apply to).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import ROOT, TINY

from megadyt.cli.main import main


@pytest.fixture(scope="module")
def run_dir(tiny_run) -> Path:
    return tiny_run


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    text = (ROOT / "megadyt" / "atomic.py").read_text()
    path.write_text("".join(json.dumps({"text": text[i:]}) + "\n" for i in range(0, 3000, 100)))
    return path


@pytest.fixture(scope="module")
def read_only_dir(tmp_path_factory):
    """An empty directory bind-mounted read-only (EROFS for root too)."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    source, mount = tmp_path_factory.mktemp("ro-source"), tmp_path_factory.mktemp("ro")
    mounted = subprocess.run(["mount", "--bind", source, mount], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount --bind is not available here: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", mount], check=True, capture_output=True)
        yield mount
    finally:
        subprocess.run(["umount", mount], check=True)


# command -> (its arguments, the option named in the error, the output's name); OUT stands for
# the unwritable place, RUN for the trained run, JSONL for the corpus, TINY for a config.
COMMANDS = {
    "export": ("export --checkpoint RUN --output OUT/w.pt", "--output", "w.pt"),
    "export-hf": ("export --format hf --checkpoint RUN --output OUT/hf", "--output", "hf"),
    "prepare-data": (
        "prepare-data --input JSONL --output-prefix OUT/data --workers 1 --cache-dir CACHE",
        "--output-prefix",
        "data",
    ),
    "train-tokenizer": (
        "train-tokenizer --input JSONL --vocab-size 300 --output OUT/t.model",
        "--output",
        "t.model",
    ),
    "compare": ("compare RUN --output OUT/c.png", "--output", "c.png"),
    "eval-output": (
        "eval --checkpoint RUN --tasks stdlib_nextline --limit 2 --output OUT/r.json",
        "--output",
        "r.json",
    ),
    "eval-run-dir": (
        "eval --checkpoint RUN --tasks stdlib_nextline --limit 2 --run-dir OUT/evaluated",
        "--run-dir",
        "evaluated",
    ),
    "import-hf": ("import-hf --model RUN --config TINY --output OUT/new", "--output", "new"),
    "sweep": ("sweep --config TINY --grid train.lr=1e-3,2e-3 --output OUT/sw", "--output", "sw"),
    "train": ("train --config TINY --set run.dir=OUT/run", "run.dir", "run"),
}


def _argv(command: str, out: Path, run_dir: Path, jsonl: Path) -> list[str]:
    places = {"RUN": run_dir, "JSONL": jsonl, "TINY": TINY, "CACHE": ROOT / "data_cache"}
    words = COMMANDS[command][0].split()
    return [str(places[w]) if w in places else w.replace("OUT", str(out)) for w in words]


def _refused(capsys, argv: list[str]) -> str:
    """Run the command; it must exit 2 with one line, no traceback. Returns that line."""
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("megadyt: error: "), captured.err[-2000:]
    return lines[0]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_output_under_a_file_is_one_line(command, run_dir, jsonl, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a directory\n")
    _, option, name = COMMANDS[command]
    line = _refused(capsys, _argv(command, afile, run_dir, jsonl))
    assert line == (
        f"megadyt: error: cannot write {option} {afile / name}: {afile} is a file, not a "
        f"directory; choose another {option}"
    )
    assert afile.read_text() == "not a directory\n"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_output_on_a_read_only_file_system_is_one_line(
    command, run_dir, jsonl, read_only_dir, capsys
):
    _, option, name = COMMANDS[command]
    line = _refused(capsys, _argv(command, read_only_dir, run_dir, jsonl))
    assert line == (
        f"megadyt: error: cannot write {option} {read_only_dir / name}: {read_only_dir} is "
        f"on a read-only file system; choose another {option}"
    )
    assert list(read_only_dir.iterdir()) == []


def test_a_directory_without_permission_is_one_line(jsonl):
    """The permission case needs a user the permission bits apply to: as root, the command
    runs as nobody, in a directory whose parents nobody may enter (pytest's are private)."""
    top = Path(tempfile.mkdtemp(prefix="megadyt-perm-"))
    top.chmod(0o755)
    corpus = shutil.copy(jsonl, top / "docs.jsonl")
    locked = top / "locked"
    locked.mkdir(mode=0o555)
    output = locked / "new" / "t.model"
    prefix = []
    if os.geteuid() == 0:
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    try:
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "megadyt", "train-tokenizer", "--input", str(corpus),
             "--vocab-size", "300", "--output", str(output)],
            capture_output=True, text=True, cwd=ROOT, timeout=120,
        )  # fmt: skip
    finally:
        shutil.rmtree(top)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"megadyt: error: cannot write --output {output}: no permission to write in {locked}; "
        "choose another --output"
    ]


# ------------------------------------------------------------------ export overwrites nothing


def _export(capsys, run_dir: Path, output: Path, *extra: str) -> tuple[int, str]:
    code = main(["export", "--checkpoint", str(run_dir), "--output", str(output), *extra])
    captured = capsys.readouterr()
    return code, captured.err


def test_export_replaces_no_file_unless_forced(run_dir, tmp_path, capsys):
    """`--output dir/dyt.pt` would write dir/dyt.yaml, here the user's own config."""
    mine = tmp_path / "dyt.yaml"
    mine.write_text("model:\n  norm: dyt\n")
    code, err = _export(capsys, run_dir, tmp_path / "dyt.pt")
    assert code == 2 and err.strip() == (
        f"megadyt: error: {mine} exists (the config written beside the weights); choose "
        "another --output, or pass --force to replace it"
    )
    assert mine.read_text() == "model:\n  norm: dyt\n" and not (tmp_path / "dyt.pt").exists()

    code, err = _export(capsys, run_dir, tmp_path / "dyt.pt", "--force")
    assert code == 0, err
    weights = (tmp_path / "dyt.pt").read_bytes()
    assert "vocab_size" in mine.read_text()  # replaced, as asked

    mine.unlink()
    code, err = _export(capsys, run_dir, tmp_path / "dyt.pt")  # the .pt itself exists
    assert code == 2 and f"{tmp_path / 'dyt.pt'} exists; choose another" in err
    assert (tmp_path / "dyt.pt").read_bytes() == weights and not mine.exists()


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_export_never_writes_weights_and_config_to_one_file(run_dir, tmp_path, capsys, force):
    code, err = _export(capsys, run_dir, tmp_path / "model.yaml", *force)
    assert code == 2 and "would hold both the weights and their config" in err, err
    assert f"--output {tmp_path / 'model.pt'}" in err and list(tmp_path.iterdir()) == []
