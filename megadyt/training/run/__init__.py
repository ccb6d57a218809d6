"""The run directory and who holds it.

- `layout`: `RunDir`, every path of a run directory and the step-tag format;
- `lock`: one writer per run (flock plus a lease);
- `provenance`: the resume check and history.jsonl's start and end records;
- `session`: `open_run`, all three for one start of `megadyt train`.
"""
