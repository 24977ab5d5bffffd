"""Text-to-image with Stable Diffusion 1.x and SDXL: models tying UNet, text encoders, VAE and a solver."""

from refiners_sd.pipeline.guidance import classifier_free_guidance, uses_guidance
from refiners_sd.pipeline.layout import PipelineLayout, Topology, read_layout
from refiners_sd.pipeline.solver_config import SOLVERS, load_scheduler_config, solver_from_config
from refiners_sd.pipeline.stable_diffusion import (
    Conditioning,
    LatentDiffusion,
    StableDiffusion1,
    StableDiffusionXL,
    StepCallback,
    load_pipeline,
)

__all__ = [
    "SOLVERS",
    "Conditioning",
    "LatentDiffusion",
    "PipelineLayout",
    "StableDiffusion1",
    "StableDiffusionXL",
    "StepCallback",
    "Topology",
    "classifier_free_guidance",
    "load_pipeline",
    "load_scheduler_config",
    "read_layout",
    "solver_from_config",
    "uses_guidance",
]
