"""score-erasure: robust concept erasure for text-to-image diffusion models."""

import os as _os
import warnings as _warnings

__version__ = "0.1.0"

# Library chatter (transformers' torchvision hints, diffusers' deprecation notices) is kept out of the Python API's
# output as it is out of the CLI's. setdefault: a user who set a verbosity keeps it.
_os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
_os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for _category in (FutureWarning, DeprecationWarning):
    _warnings.filterwarnings("ignore", category=_category, module=r"(diffusers|transformers|torch|accelerate)\b")
