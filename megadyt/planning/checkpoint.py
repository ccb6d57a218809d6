"""Size of one megadyt checkpoint and the time to save it (derivation in README.md here).

A checkpoint (megadyt.training.checkpoint.store/checkpointer/weights) holds, per TP shard of `n`
parameters (`params_per_rank`, norms replicated on every TP rank): DeepSpeed's module states (`n·w`,
written by DP rank 0; ZeRO-3 writes only empty placeholders), the optimizer states (12 B/param: fp32
master + Adam m, v; split over DP under ZeRO ≥ 1, in DP rank 0's module-states file under ZeRO-0,
where fp32 keeps no master copy: 8 B/param), the weights/ copy (`n·w`, the module's own dtype: every
save under ZeRO-3, only the run's last save under ZeRO 0-2,
`training.checkpoint.weights.keeps_weights_copy`) and one RNG file per rank. The estimate is of a
periodic save; `final_weights` is what the last save adds. All sizes are bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from megadyt.config.schema import Config
from megadyt.errors import MegadytError

# One rank's rng_rankNNNNN.pt: Python, NumPy and torch generator states (31,804 B measured on
# CPU; the CUDA generators add a few hundred bytes on GPU).
RNG_FILE_BYTES = 32e3
# BLAKE3 of one stream (one rank, one core), the manifest's hash (training.checkpoint.manifest): 3.8
# GB/s measured on this project's CPU machine; taken as 3 GB/s.
HASH_GBS = 3.0
DEFAULT_FS_BANDWIDTH_GBS = 5.0


@dataclass(frozen=True)
class CheckpointEstimate:
    """One checkpoint's bytes by part, and the seconds a save takes at a stated bandwidth."""

    model: float  # DeepSpeed module states, all TP ranks
    optimizer: float  # master weights + Adam m, v, all ranks
    weights: float  # weights/tp_rank_NN.pt, all TP ranks, in a periodic save
    final_weights: float  # what the run's last save adds (the copy ZeRO 0-2 keep only there)
    rng: float  # one RNG file per rank
    largest_file: float
    fs_bandwidth_gbs: float
    write_s: float  # every byte through the file system's aggregate bandwidth
    hash_s: float  # the manifest: every file read back and hashed, shared over all ranks
    save_interval: int
    overhead: float  # (write + hash) / (save_interval × step time)

    @property
    def total(self) -> float:
        return self.model + self.optimizer + self.weights + self.rng

    @property
    def save_s(self) -> float:
        return self.write_s + self.hash_s

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        out.update(total=self.total, save_s=self.save_s, hash_gbs_per_rank=HASH_GBS)
        return out


def check_bandwidth(fs_bandwidth_gbs: float) -> None:
    """A bandwidth that is not a positive finite number would give a meaningless time."""
    if not (math.isfinite(fs_bandwidth_gbs) and fs_bandwidth_gbs > 0):
        raise MegadytError(f"--fs-bandwidth-gbs must be a positive number, got {fs_bandwidth_gbs}")


def checkpoint_estimate(
    cfg: Config,
    world: int,
    bf16: bool,
    step_time_s: float,
    fs_bandwidth_gbs: float = DEFAULT_FS_BANDWIDTH_GBS,
) -> CheckpointEstimate:
    """Bytes and save time of one checkpoint of `cfg` trained on `world` ranks."""
    # Imported here: `memory` imports the model code (torch), and the CLI reads this module's
    # defaults while building its parser, before anything may import torch.
    from megadyt.planning.memory import optimizer_bytes_per_param, params_per_rank

    check_bandwidth(fs_bandwidth_gbs)
    p = cfg.parallel
    n = params_per_rank(cfg)
    w = 2 if bf16 else 4
    dp = world // p.tp
    opt_shard = n * optimizer_bytes_per_param(cfg, bf16)  # one TP rank's, all DP ranks
    model_file = 0.0 if p.zero_stage >= 3 else n * w  # ZeRO-3: placeholders (~14 kB/rank)
    if p.zero_stage == 0:  # optimizer state rides in DP rank 0's module-states file
        largest = max(model_file + opt_shard, n * w)
    else:
        largest = max(model_file, n * w, opt_shard / dp)
    copy = n * w * p.tp  # the TP shards of the weights (training.checkpoint.weights)
    periodic_copy = copy if p.zero_stage >= 3 else 0.0
    sizes = dict(model=model_file * p.tp, optimizer=opt_shard * p.tp, weights=periodic_copy)
    total = sum(sizes.values()) + world * RNG_FILE_BYTES
    bandwidth = fs_bandwidth_gbs * 1e9
    # Files are hashed whole, in byte-balanced shares over all ranks (training.checkpoint.manifest):
    # the slowest rank hashes at least the largest file or a 1/world share, and everything is
    # read back through the same file system (read bandwidth assumed equal to write).
    hash_s = max(max(largest, total / world) / (HASH_GBS * 1e9), total / bandwidth)
    write_s = total / bandwidth
    interval = cfg.train.save_interval
    return CheckpointEstimate(
        **sizes,
        final_weights=copy - periodic_copy,
        rng=world * RNG_FILE_BYTES,
        largest_file=largest,
        fs_bandwidth_gbs=fs_bandwidth_gbs,
        write_s=write_s,
        hash_s=hash_s,
        save_interval=interval,
        overhead=(write_s + hash_s) / (interval * step_time_s) if step_time_s > 0 else 0.0,
    )
