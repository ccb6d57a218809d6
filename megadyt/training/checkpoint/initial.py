"""Starting a run from weights made elsewhere: a weights-only checkpoint at step 0.

`megadyt import-hf` writes a run directory whose only checkpoint, `step_0000000`, holds the
weights files every reader of weights already understands (`weights/tp_rank_NN.pt`, for the
config's TP size) and a manifest of kind `WEIGHTS_ONLY`, but no DeepSpeed state. `megadyt train`
on that run loads the weights into its freshly built model before DeepSpeed wraps it (merged
and re-split when it runs at another TP size), keeps their α (no calibration), and trains from
step 0 with a new optimizer. `megadyt eval` and `export` read it like any checkpoint.

The whole run directory is written under a temporary name and renamed when complete, so a
directory under the run's name always holds a verified checkpoint.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import torch
from megatron.core import parallel_state

from megadyt.atomic import atomic_output
from megadyt.config.schema import Config
from megadyt.errors import MegadytError
from megadyt.parallel.tp_shards import shard_state_dict, shard_tensor
from megadyt.training.checkpoint.manifest import WEIGHTS_ONLY, read_manifest, write_manifest
from megadyt.training.checkpoint.store import check_same_model
from megadyt.training.checkpoint.weights import load_into, load_tp1_weights, load_tp_shard
from megadyt.training.run.layout import RunDir, manifest_file, tag_for, weights_file, weights_files


def write_initial_run(
    run_dir: str | Path, cfg: Config, state: dict, layout: dict, record: dict
) -> Path:
    """Write a new run at `run_dir` whose step-0 checkpoint holds `state` (a whole TP=1 state
    dict; `layout` is `tp_layout` of the model) split for `cfg.parallel.tp`; `record` goes into
    the run's history as its first ("import") event. Returns the step directory."""
    final = Path(run_dir)
    if final.exists():
        raise MegadytError(f"{final} exists; import into a new run directory")
    tp, tag = cfg.parallel.tp, tag_for(0)
    if tp > 1 and all(split is None for split in layout.values()):
        raise ValueError("layout splits nothing: take it from an initialised model's tp_layout")
    with atomic_output(final) as tmp:
        run = RunDir(tmp)
        tag_dir = run.tag_dir(tag)
        for rank in range(tp):
            shard = {
                name: tensor if layout[name] is None  # saved as is: no copy of the model
                else shard_tensor(tensor, *layout[name], rank, tp)
                for name, tensor in state.items()
            }  # fmt: skip
            payload = {
                "layout": {n: list(s) if s else None for n, s in layout.items()},
                "tp": tp,
                "config": cfg.to_dict(),
                "state": shard,
            }
            path = weights_file(tag_dir, rank)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(payload, path)
        write_manifest(tag_dir, 0, cfg.to_dict()["model"], kind=WEIGHTS_ONLY)
        time = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        run.append_history({"event": "import", "time": time, **record})
        run.publish_latest(tag)
    return RunDir(final).tag_dir(tag)


def initial_checkpoint(run: RunDir) -> Path | None:
    """The step directory `latest` names when it is a weights-only checkpoint, else None."""
    tag = run.latest_tag()
    if tag is None or not manifest_file(run.tag_dir(tag)).is_file():
        return None
    try:
        manifest = read_manifest(run.tag_dir(tag))
    except MegadytError:
        return None  # the resume's own verification reports it (and may fall back)
    return run.tag_dir(tag) if manifest.get("kind") == WEIGHTS_ONLY else None


def load_initial_weights(model: torch.nn.Module, tag_dir: Path, identity: dict) -> None:
    """Load a weights-only checkpoint into this rank's (plain, not yet wrapped) model: its own
    TP shard when the sizes match, else the merged weights re-split for this TP size. A model
    other than `identity` (the config's `model` section) is refused first, by name."""
    check_same_model(tag_dir, read_manifest(tag_dir).get("model"), identity)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    if len(weights_files(tag_dir)) == tp:
        _, state = load_tp_shard(tag_dir, rank, tp)
    else:
        _, full = load_tp1_weights(tag_dir)
        state = shard_state_dict(full, model, rank, tp)
    load_into(model, state, f"the weights in {tag_dir}")
