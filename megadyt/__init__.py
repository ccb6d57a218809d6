"""megadyt: pretraining normalization-free (DyT/Derf) LLaMA models on megatron-core + DeepSpeed."""

import warnings

# megatron-core warns at import time that optional GPU extensions (Apex, Transformer Engine) are
# missing; megadyt uses its own norms and megatron-core's local spec, so the message is noise.
warnings.filterwarnings("ignore", message=r".*(Apex|Transformer Engine).* not installed.*")

__version__ = "0.1.0"
