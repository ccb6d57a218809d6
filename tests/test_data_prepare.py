"""prepare-data: Pile-format shards to megatron-core indexed datasets, errors, interruption."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import sentencepiece as spm
import zstandard
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megadyt.cli.main import main
from megadyt.data.prepare import prepare_data
from megadyt.data.spm import train_sentencepiece
from megadyt.errors import MegadytError

WORDS = "alpha beta gamma delta 42 ünïcödé 日本 🎉 def return\tindent".split(" ")


def _doc(i: int) -> str:
    words = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(5 + i % 40)]
    return " ".join(words) + f"\n    x = {i}\n"


def _records(n: int) -> list[dict]:
    subsets = ["Pile-CC", "Github", "Ubuntu IRC"]
    return [{"text": _doc(i), "meta": {"pile_set_name": subsets[i % 3]}} for i in range(n)]


def _write_jsonl(path, records, compress=False) -> str:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    if compress:
        data = zstandard.ZstdCompressor(level=3).compress(data)
    path.write_bytes(data)
    return str(path)


@pytest.fixture(scope="module")
def tok_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep_tok")
    texts = [_doc(i) for i in range(300)]
    return train_sentencepiece(texts, 320, str(root / "tok.model"), num_threads=1)


def _read_docs(prefix: str) -> list[list[int]]:
    ds = IndexedDataset(prefix)
    return [ds[i].tolist() for i in range(len(ds))]


def test_zst_round_trip_matches_sentencepiece(tmp_path, tok_model):
    records = _records(120)
    records.insert(5, {"text": "", "meta": {"pile_set_name": "Pile-CC"}})  # empty: skipped
    shard = _write_jsonl(tmp_path / "00.jsonl.zst", records, compress=True)
    summary = prepare_data([shard], tok_model, str(tmp_path / "out" / "pile"), progress=False)
    sp = spm.SentencePieceProcessor(model_file=tok_model)
    expected = [sp.encode(r["text"]) + [sp.eos_id()] for r in records if r["text"]]
    assert _read_docs(str(tmp_path / "out" / "pile")) == expected
    assert (summary.documents, summary.skipped_empty, summary.skipped_bad) == (120, 1, 0)
    assert summary.tokens == sum(map(len, expected))
    assert not [p for p in os.listdir(tmp_path / "out") if ".tmp-" in p]


def test_workers_byte_identical(tmp_path, tok_model):
    shards = [
        _write_jsonl(tmp_path / "a.jsonl.zst", _records(700), compress=True),
        _write_jsonl(tmp_path / "b.jsonl", _records(333)[::-1]),
    ]
    prepare_data(shards, tok_model, str(tmp_path / "w1"), workers=1, progress=False)
    prepare_data(shards, tok_model, str(tmp_path / "w2"), workers=2, progress=False)
    for suffix in (".bin", ".idx"):
        one = (tmp_path / f"w1{suffix}").read_bytes()
        two = (tmp_path / f"w2{suffix}").read_bytes()
        assert one == two and len(one) > 0
    assert len(IndexedDataset(str(tmp_path / "w2"))) == 1033


def test_split_by_subset(tmp_path, tok_model):
    records = _records(30)
    records.append({"text": "no meta here"})
    shard = _write_jsonl(tmp_path / "s.jsonl", records)
    summary = prepare_data(
        [shard], tok_model, str(tmp_path / "p"), split_by_subset=True, progress=False
    )
    sp = spm.SentencePieceProcessor(model_file=tok_model)
    for subset, name in [
        ("Pile-CC", "Pile-CC"),
        ("Github", "Github"),
        ("Ubuntu IRC", "Ubuntu_IRC"),
    ]:
        expected = [
            sp.encode(r["text"]) + [2]
            for r in records
            if r.get("meta", {}).get("pile_set_name") == subset
        ]
        assert _read_docs(str(tmp_path / f"p_{name}")) == expected
    assert _read_docs(str(tmp_path / "p_unlabelled")) == [sp.encode("no meta here") + [2]]
    assert sum(summary.outputs.values()) == 31


BAD_CASES = [
    (b'{"text": "fine"}\n{"text": "broken\n', 2, "malformed JSON"),
    (b'{"text": "fine"}\n\n{"meta": {}}\n', 3, "'text' is missing"),
    (b'{"text": 17}\n', 1, "'text' is a int, not a string"),
    (b'["text"]\n', 1, "expected a JSON object"),
    (b'{"text": "ok"}\n{"text": "\xff\xfe bad utf-8"}\n', 2, "malformed JSON"),
]


@pytest.mark.parametrize("content,line,reason", BAD_CASES)
def test_bad_record_stops_with_file_and_line(tmp_path, tok_model, content, line, reason):
    shard = tmp_path / "bad.jsonl"
    shard.write_bytes(content)
    prefix = str(tmp_path / "out")
    with pytest.raises(MegadytError) as info:
        prepare_data([str(shard)], tok_model, prefix, progress=False)
    message = str(info.value)
    assert f"{shard}:{line}: bad record" in message and reason in message
    assert "--skip-bad-records" in message
    assert os.listdir(tmp_path) == ["bad.jsonl"]  # no output, no temporary files


@pytest.mark.parametrize("skip_bad_records", [False, True])
def test_corrupt_or_truncated_zst(tmp_path, tok_model, skip_bad_records):
    """A damaged stream is its own one-line error naming the byte offset, never a malformed
    record: --skip-bad-records would drop every document after the damage without a word."""
    shard = tmp_path / "bad.jsonl.zst"

    def refused() -> str:
        with pytest.raises(MegadytError) as info:
            prepare_data([str(shard)], tok_model, str(tmp_path / "o"), progress=False,
                         skip_bad_records=skip_bad_records)  # fmt: skip
        assert sorted(os.listdir(tmp_path)) == ["bad.jsonl.zst"]  # no output, no temp files
        return str(info.value)

    shard.write_bytes(b"this is not zstandard data at all")
    assert refused().startswith(f"{shard} is corrupt: the zstd frame from byte 0 fails before ")
    data = "".join(json.dumps(r) + "\n" for r in _records(47)).encode()
    good = zstandard.ZstdCompressor(level=3).compress(data)
    cut = 2 * len(good) // 3  # the case: 31 of 47 documents behind the cut
    shard.write_bytes(good[:cut])
    assert refused() == (
        f"{shard} is truncated: it ends at byte {cut:,} inside the zstd frame from byte 0; "
        "the file is incomplete: copy or download it again"
    )
    second = zstandard.ZstdCompressor(level=3).compress(data)  # a cut in the second frame
    shard.write_bytes(good + second[:100])
    assert f"inside the zstd frame from byte {len(good):,}" in refused()
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0xFF
    shard.write_bytes(bytes(damaged))
    assert refused().startswith(f"{shard} is corrupt: the zstd frame from byte 0 fails before")


def test_a_zst_of_several_frames_reads_every_record(tmp_path, tok_model):
    """pzstd and `cat a.zst b.zst` write several frames: each is read, in order."""
    frames = [_records(30)[:10], _records(30)[10:]]
    parts = [
        zstandard.ZstdCompressor(level=3).compress(
            "".join(json.dumps(r) + "\n" for r in part).encode()
        )
        for part in frames
    ]
    shard = tmp_path / "two.jsonl.zst"
    shard.write_bytes(b"".join(parts))
    summary = prepare_data([str(shard)], tok_model, str(tmp_path / "out"), progress=False)
    sp = spm.SentencePieceProcessor(model_file=tok_model)
    expected = [sp.encode(r["text"]) + [sp.eos_id()] for r in _records(30)]
    assert summary.documents == 30 and _read_docs(str(tmp_path / "out")) == expected


def test_skip_bad_records_counts(tmp_path, tok_model):
    content = b"".join(case[0] for case in BAD_CASES) + b'{"text": "   "}\n'
    shard = tmp_path / "mixed.jsonl"
    shard.write_bytes(content)
    summary = prepare_data(
        [str(shard)], tok_model, str(tmp_path / "out"), skip_bad_records=True, progress=False
    )
    assert (summary.documents, summary.skipped_bad, summary.skipped_empty) == (3, 5, 1)
    sp = spm.SentencePieceProcessor(model_file=tok_model)
    assert _read_docs(str(tmp_path / "out")) == [sp.encode(t) + [2] for t in ["fine", "fine", "ok"]]


def test_cli_errors_and_summary(tmp_path, tok_model, capsys):
    shard = tmp_path / "bad.jsonl"
    shard.write_bytes(b'{"text": "a"}\nnot json\n')
    args = ["prepare-data", "--tokenizer", tok_model, "--output-prefix", str(tmp_path / "o")]
    assert main([*args, "--input", str(shard), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{shard}:2: bad record: malformed JSON" in err
    assert main([*args, "--input", str(shard), "--skip-bad-records", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "1 documents" in out and "1 bad records" in out
    assert main([*args, "--input", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl' not found" in capsys.readouterr().err
    assert main([*args, "--input", str(tmp_path / "*.zst")]) == 2
    assert "matches no files" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n')
    assert main([*args, "--input", str(empty)]) == 2
    assert "no documents found" in capsys.readouterr().err
    assert main([*args[:2], str(tmp_path / "nope.model"), *args[3:], "--input", str(empty)]) == 2
    assert "nope.model' not found" in capsys.readouterr().err


def test_progress_reports_rates(tmp_path, tok_model, capsys):
    shard = _write_jsonl(tmp_path / "p.jsonl", _records(10))
    args = ["--tokenizer", tok_model, "--output-prefix", str(tmp_path / "o"), "--input", shard]
    assert main(["prepare-data", *args]) == 0
    captured = capsys.readouterr()
    assert "docs/s" in captured.err and "tokens/s" in captured.err
    assert "10 documents" in captured.out


def _start_on_fifo(tmp_path, tok_model, prefix):
    fifo = tmp_path / "stream.jsonl"
    os.mkfifo(fifo)
    cmd = [
        sys.executable,
        "-m",
        "megadyt",
        "prepare-data",
        "--input",
        str(fifo),
        "--tokenizer",
        tok_model,
        "--output-prefix",
        prefix,
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    writer = open(fifo, "wb")  # blocks until prepare-data opens its input
    for record in _records(200):
        writer.write((json.dumps(record) + "\n").encode())
    writer.flush()
    deadline = time.time() + 60
    while not any(".bin.tmp-" in p for p in os.listdir(tmp_path)):  # it is writing now
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    return proc, writer


def test_killed_run_leaves_no_idx_and_next_run_cleans_up(tmp_path, tok_model):
    prefix = str(tmp_path / "out")
    proc, writer = _start_on_fifo(tmp_path, tok_model, prefix)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait(timeout=60)
    writer.close()
    names = os.listdir(tmp_path)
    assert "out.idx" not in names and "out.bin" not in names
    assert [n for n in names if ".tmp-" in n]  # only temporary names were written
    os.remove(tmp_path / "stream.jsonl")
    shard = _write_jsonl(tmp_path / "s.jsonl", _records(5))
    prepare_data([shard], tok_model, prefix, progress=False)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]  # stale temps removed
    assert len(IndexedDataset(prefix)) == 5


def test_terminated_run_removes_its_temp_files(tmp_path, tok_model):
    prefix = str(tmp_path / "out")
    shard = _write_jsonl(tmp_path / "old.jsonl", _records(3))
    prepare_data([shard], tok_model, prefix, progress=False)  # an older complete dataset
    proc, writer = _start_on_fifo(tmp_path, tok_model, prefix)
    proc.terminate()
    proc.wait(timeout=60)
    writer.close()
    assert proc.returncode != 0
    names = os.listdir(tmp_path)
    assert not [n for n in names if ".tmp-" in n], names
    assert len(IndexedDataset(prefix)) == 3  # the old dataset is untouched
