"""Resuming a checkpoint on another data-parallel size, through DeepSpeed's universal checkpoint.

ZeRO stages 1-3 split the optimizer state (fp32 master weights, Adam moments) by data-parallel
rank, so what `a` ranks saved cannot be loaded as is by `b` ranks (ZeRO-0, fp32 or bf16, keeps
it whole in the model-state file, which any number of ranks loads). DeepSpeed's own
`ds_to_universal` rewrites such a checkpoint into one folder per parameter, which
`load_universal` loads on any data-parallel size. megadyt does this when the number of
data-parallel ranks changed:

- rank 0 converts `checkpoints/step_N` into `checkpoints/universal/step_N`, in a fresh process
  (DeepSpeed's tool, run as `python -m megadyt.training.checkpoint.reshard`, which only hides
  megatron-core's empty `_extra_state` entries from it: `convert_main`; its output goes to
  `universal/step_N.log`), under a temporary
  name that is renamed when complete, so a crash never leaves a conversion that looks usable.
  A complete conversion is reused while the checkpoint's manifest is the one it was made from
  (a step re-saved after a fallback gets a new conversion); older ones are removed, and the
  first save after the resume removes it (`remove_conversions`): only its log stays;
- every rank then loads it, with the engine's universal switch on for that one load.

The data position stays exact, since samples are addressed by global index (step × global
batch) whatever the number of ranks. Refused in one line: a change of tensor-parallel size
(megatron-core's shard layout is not described to DeepSpeed's converter), a data-parallel change
at TP > 1 (untested), and with the optimizer offloaded to CPU (untested).
The conversion runs while the other ranks wait in a collective, so it must finish within
`parallel.timeout_minutes`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from megadyt.errors import MegadytError
from megadyt.parallel.distributed import from_rank0
from megadyt.training.run.layout import RunDir, manifest_file

_MP_RANK = re.compile(r"mp_rank_(\d+)")
PARTIAL_SUFFIX = ".converting"
SOURCE_MANIFEST = "source_manifest.json"  # the checkpoint's manifest, copied into its conversion


def _ranks(count: int) -> str:
    return f"{count} rank" if count == 1 else f"{count} ranks"


def saved_tp(tag_dir: Path) -> int:
    """Tensor-parallel size a checkpoint was saved with: the distinct `mp_rank_NN` indices of
    DeepSpeed's model-state files (ZeRO 0-2: mp_rank_NN_model_states.pt; ZeRO-3:
    zero_pp_rank_D_mp_rank_NN_model_states.pt)."""
    ranks = {m.group(1) for p in tag_dir.glob("*model_states.pt") if (m := _MP_RANK.search(p.name))}
    return max(1, len(ranks))


def needs_universal(engine, tag_dir: Path, saved_world: int, tp: int, world: int) -> bool:
    """Whether loading `tag_dir` (saved by `saved_world` ranks) needs the universal form here;
    MegadytError when the change is one megadyt does not support."""
    old_tp = saved_tp(tag_dir)
    if old_tp != tp:
        raise MegadytError(
            f"checkpoint {tag_dir} was saved with tensor-parallel size {old_tp}, this run has "
            f"{tp}; changing it on resume is not supported: set parallel.tp={old_tp} (the "
            "data-parallel size may change)"
        )
    if saved_world == world:
        return False
    if engine.zero_optimization_stage() == 0:
        return False  # the whole optimizer state is in the model-state file: loaded as is
    unsupported = None
    if tp > 1:
        unsupported = f"at tensor-parallel size {tp}"
    elif engine.zero_cpu_offload():
        unsupported = "with parallel.offload_optimizer"
    if unsupported:
        raise MegadytError(
            f"checkpoint {tag_dir} was saved by {_ranks(saved_world)}, this run has {world}; a "
            f"data-parallel change {unsupported} is not supported: resume on "
            f"{_ranks(saved_world)}"
        )
    return True


def _convert(tag_dir: Path, out: Path, log: Path) -> None:
    """DeepSpeed's ds_to_universal from `tag_dir` into `out` (rank 0; a fresh process, so its
    worker pool never forks a process holding torch threads and process groups)."""
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    workers = max(1, min(8, (os.cpu_count() or 2) // 2))
    cmd = [
        sys.executable, "-m", "megadyt.training.checkpoint.reshard",
        "--input_folder", str(tag_dir), "--output_folder", str(partial),
        "--num_extract_workers", str(workers), "--num_merge_workers", str(max(1, workers // 2)),
        "--inject_missing_state",  # megatron-core models carry no UNIVERSAL_CHECKPOINT_INFO
    ]  # fmt: skip
    with open(log, "w") as sink:
        proc = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=out.parent)
    if proc.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise MegadytError(
            f"DeepSpeed's ds_to_universal failed (exit {proc.returncode}) converting {tag_dir}; "
            f"its output is in {log}"
        )
    # the tool names its output folder in a `latest_universal` file beside it: megadyt loads by
    # tag, and that file would name the temporary folder
    (out.parent / "latest_universal").unlink(missing_ok=True)
    shutil.copyfile(manifest_file(tag_dir), partial / SOURCE_MANIFEST)
    os.replace(partial, out)


def _is_current(out: Path, tag_dir: Path) -> bool:
    """Whether conversion `out` was made from the checkpoint now in `tag_dir` (same manifest:
    same files, same checksums)."""
    made_from = out / SOURCE_MANIFEST
    return made_from.is_file() and made_from.read_bytes() == manifest_file(tag_dir).read_bytes()


def remove_conversions(run: RunDir) -> None:
    """Delete the universal conversions (rank 0, after a save at the new size: the conversion
    served its one resume); their logs stay."""
    if run.universal_root.is_dir():
        for path in run.universal_root.iterdir():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)


def ensure_universal(run: RunDir, tag: str, saved_world: int, world: int) -> Path:
    """The universal form of checkpoint `tag` (a collective: rank 0 converts, all get its
    verdict). Older conversions are removed."""
    out = run.universal_dir(tag)
    error = None
    if dist.get_rank() == 0:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            for old in out.parent.iterdir():
                if old.name not in (tag, f"{tag}.log"):
                    shutil.rmtree(old) if old.is_dir() else old.unlink()
            log = out.with_name(f"{tag}.log")
            if out.is_dir() and not _is_current(out, run.tag_dir(tag)):
                shutil.rmtree(out)  # made from an earlier save of this step
            if out.is_dir():
                print(f"megadyt: reusing the universal form of {tag} in {out}", flush=True)
            else:
                print(
                    f"megadyt: checkpoint {tag} was saved by {_ranks(saved_world)}, this run has "
                    f"{world}: converting it with DeepSpeed's ds_to_universal into {out} "
                    f"(log: {log.name})",
                    flush=True,
                )
                start = time.monotonic()
                _convert(run.tag_dir(tag), out, log)
                print(f"megadyt: converted in {time.monotonic() - start:.0f} s", flush=True)
        except (MegadytError, OSError) as exc:
            error = str(exc)
    error = from_rank0(error)
    if error:
        raise MegadytError(error)
    return out


def load_universal(engine, run: RunDir, tag: str):
    """engine.load_checkpoint of the universal form of `tag`; DeepSpeed reads its switch from
    the config at every load, so it is on for this load only."""
    config = engine._config
    config.load_universal_checkpoint = True
    try:
        return engine.load_checkpoint(
            str(run.universal_root), tag=tag, load_optimizer_states=True,
            load_lr_scheduler_states=False,
        )  # fmt: skip
    finally:
        config.load_universal_checkpoint = False


# -- the conversion process -------------------------------------------------------------------
# `python -m megadyt.training.checkpoint.reshard --input_folder IN --output_folder OUT ...` runs
# DeepSpeed's ds_to_universal unchanged. The tool copies every entry of a model-state file's
# `module` dict as a tensor; megatron-core's parallel linear layers add `NAME._extra_state`
# entries whose value is None (kept for Transformer Engine; they carry nothing), on which it
# fails ("'NoneType' object has no attribute 'float'"). In that process only, `torch.load` drops
# exactly those entries from what the tool reads; the files are not changed, and a universal
# load never reads `_extra_state` (DeepSpeed restores the weights from the converted copies).


def _load_without_empty_extra_state(*args, **kwargs):
    state = _torch_load(*args, **kwargs)
    module = state.get("module") if isinstance(state, dict) else None
    if isinstance(module, dict):
        for key in [k for k, v in module.items() if v is None and k.endswith("._extra_state")]:
            del module[key]
    return state


def convert_main() -> None:
    from deepspeed.checkpoint import ds_to_universal

    torch.load = _load_without_empty_extra_state  # this process only: it exists for the tool
    ds_to_universal.main(ds_to_universal.parse_arguments())


_torch_load = torch.load

if __name__ == "__main__":
    convert_main()
