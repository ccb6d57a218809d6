"""megadyt: pretraining normalization-free (DyT/Derf) LLaMA models on megatron-core + DeepSpeed."""

from megadyt import warnings_filter

# Known third-party warnings (megatron-core, torch) are silenced here, at import, before any of
# those libraries is imported; the list and the reason for each is in megadyt/warnings_filter.py.
warnings_filter.install()

__version__ = "0.1.0"
