"""Single-file SD 1.x / SDXL checkpoints (A1111, ComfyUI, Forge, civitai): detect, load offline, save.

See :mod:`refiners_sd.single_file.layout` for the key layout and what is accepted or rejected,
:mod:`refiners_sd.single_file.infer` for how sizes are read from tensor shapes.
"""

from refiners_sd.single_file.layout import COMPONENT_PREFIXES, Architecture, architecture_from_keys
from refiners_sd.single_file.loading import detect_architecture, load_single_file, load_vae
from refiners_sd.single_file.reader import CheckpointFile, open_checkpoint
from refiners_sd.single_file.saving import save_single_file, single_file_state_dict

__all__ = [
    "COMPONENT_PREFIXES",
    "Architecture",
    "CheckpointFile",
    "architecture_from_keys",
    "detect_architecture",
    "load_single_file",
    "load_vae",
    "open_checkpoint",
    "save_single_file",
    "single_file_state_dict",
]
