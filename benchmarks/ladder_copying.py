"""The regime ladder's copying probe: each finished cell's checkpoint scored on held-out text
and on its immediate repeat (megadyt.evaluation.copying).

The chunks are the first CHUNK_TOKENS tokens of the first CHUNKS validation samples, the same
for every cell (the ladder pins data.valid_seed). A cell's score is kept in its run directory
(copying.json, with the checkpoint step it came from), so a rerun or --report-only scores
only cells it has not scored yet.
"""

from __future__ import annotations

import json
from pathlib import Path

CHUNKS = 64
CHUNK_TOKENS = 120  # two copies fit the tiny twins' 256-token sequences
COPYING_FILE = "copying.json"


def add_copying(cells: list, rows: list[dict], config_of) -> None:
    """Give each done row copying_first / copying_repeat / copying_gain (nats); `config_of(cell)`
    is the cell's validated Config (its validation split gives the chunks)."""
    from megadyt.atomic import atomic_write_text
    from megadyt.parallel.distributed import destroy_distributed, init_distributed

    done = [(c, r) for c, r in zip(cells, rows) if r["status"] == "done"]
    pending = [(c, r) for c, r in done if _cached(c.run_dir, r["steps"]) is None]
    if pending:
        init_distributed(tp=1)
        try:
            chunks = _chunks(config_of(pending[0][0]))
            for cell, row in pending:
                score = _score(cell.run_dir, chunks)
                record = {"step": row["steps"], "chunks": list(chunks.shape), **score}
                atomic_write_text(cell.run_dir / COPYING_FILE, json.dumps(record) + "\n")
        finally:
            destroy_distributed()
    for cell, row in done:
        score = _cached(cell.run_dir, row["steps"])
        row.update({f"copying_{k}": score[k] for k in ("first", "repeat", "gain")})


def _cached(run_dir: Path, step: int) -> dict | None:
    path = run_dir / COPYING_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("step") == step else None


def _chunks(cfg):
    from megadyt.evaluation.copying import held_out_chunks
    from megadyt.training.data import build_train_valid

    _, valid = build_train_valid(cfg)
    return held_out_chunks(valid, CHUNKS, CHUNK_TOKENS)


def _score(run_dir: Path, chunks) -> dict[str, float]:
    from megadyt.evaluation.copying import copying_score
    from megadyt.evaluation.loading import load_checkpoint_model

    model, cfg = load_checkpoint_model(str(run_dir), "cpu", verify=False)
    return copying_score(model, chunks, cfg.model.seq_length).as_dict()
