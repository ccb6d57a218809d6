"""Checkpoint persistence: what a checkpoint holds and how it is written, verified and read.

- `store`: the format: DeepSpeed's engine state + RNG + weights, published by `latest`;
- `checkpointer`: what the loop calls (save with its client state, load, retention after);
- `manifest`: sizes and BLAKE3 checksums, hashed and verified by all ranks;
- `weights`: each TP shard's weights in a form one device loads (eval, export);
- `initial`: a weights-only step 0 (what `megadyt import-hf` writes);
- `reshard`: resuming on another data-parallel size (DeepSpeed's universal checkpoint);
- `retention`: which checkpoints are kept; `rng`: every generator's state;
- `safe_load`: reading pickles without running code.
"""
