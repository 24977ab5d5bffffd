"""What training adapters on Stable Diffusion needs beyond generation (:class:`refiners_core.TrainablePipeline`).

One training step, as diffusers' text-to-image LoRA example does it: images to latents through the VAE
(posterior mean, scaled), captions to text embeddings (with gradients, so that text-encoder adapters learn),
``noisy = sqrt(alpha_bar_t) * latents + sqrt(1 - alpha_bar_t) * noise``, and the mean squared error between
the UNet's prediction and its target (the noise for ``epsilon`` models, ``v`` for ``v_prediction`` ones).
SDXL's time ids say "original size = target size = the training image, no crop": images reach the trainer
already resized and cropped to the size the UNet sees.

:class:`TrainingMixin` gives :class:`~refiners_sd.StableDiffusion1` and :class:`~refiners_sd.StableDiffusionXL`
these methods.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from refiners_sd.solvers.schedule import alphas_cumprod, make_betas

if TYPE_CHECKING:
    from refiners_sd.pipeline.stable_diffusion import LatentDiffusion

__all__ = ["TrainingConditioning", "TrainingMixin", "noise_schedule"]


@dataclass
class TrainingConditioning:
    """Text conditioning of one training batch (per sample, no guidance pair)."""

    text_embedding: torch.Tensor
    pooled_text_embedding: torch.Tensor | None = None


def noise_schedule(config: Mapping[str, Any]) -> torch.Tensor:
    """``alpha_bar_t`` for every training timestep of a diffusers scheduler config (SD's defaults otherwise)."""
    betas = make_betas(
        int(config.get("num_train_timesteps", 1000)),
        float(config.get("beta_start", 0.00085)),
        float(config.get("beta_end", 0.012)),
        config.get("beta_schedule", "scaled_linear"),
    )
    return alphas_cumprod(betas)


class TrainingMixin:
    """Training steps for :class:`~refiners_sd.pipeline.stable_diffusion.LatentDiffusion` models."""

    def _model(self) -> LatentDiffusion:
        return self  # type: ignore[return-value]

    @property
    def num_train_timesteps(self) -> int:
        """Timesteps of the training noise schedule (1000 for Stable Diffusion)."""
        return int(self._model().scheduler_config.get("num_train_timesteps", 1000))

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts: ``epsilon`` (the noise) or ``v_prediction``."""
        return str(self._model().scheduler_config.get("prediction_type", "epsilon"))

    # components() and module_names() are the Pipeline contract's; LatentDiffusion's own, once it has them,
    # come first in the method resolution order and these become unused.

    def components(self) -> dict[str, nn.Module]:
        """``unet``, ``text_encoder`` (and ``text_encoder_2`` for SDXL), ``vae``."""
        model: Any = self._model()
        parts: dict[str, nn.Module] = {"unet": model.unet}
        if getattr(model, "tokenizer_2", None) is not None:
            parts["text_encoder"] = model.text_encoder.text_encoder_l
            parts["text_encoder_2"] = model.text_encoder.text_encoder_g
        else:
            parts["text_encoder"] = model.text_encoder
        parts["vae"] = model.autoencoder
        return parts

    def module_names(self, component: str, convention: str) -> dict[str, nn.Module]:
        """diffusers names of the UNet, transformers names (``text_model.``...) of the text encoders."""
        from refiners_core import RefinersError
        from refiners_sd.clip.loading import text_encoder_module_map
        from refiners_sd.unet.mapping import diffusers_module_map

        parts, model = self.components(), self._model()
        if component == "unet" and convention == "diffusers":
            return diffusers_module_map(model.unet)
        if component.startswith("text_encoder") and component in parts and convention == "transformers":
            mapping = text_encoder_module_map(parts[component])  # type: ignore[arg-type]
            return {(key if key == "text_projection" else f"text_model.{key}"): v for key, v in mapping.items()}
        raise RefinersError(f"no {convention!r} module names for component {component!r}")

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the activations of the UNet's residual and transformer blocks in the backward pass instead
        of keeping them: less memory for a second forward pass of those blocks. Idempotent."""
        from torch.utils.checkpoint import checkpoint

        from refiners_sd.unet.blocks import CrossAttentionBlock, ResidualBlock

        for module in self._model().unet.modules():
            if isinstance(module, ResidualBlock | CrossAttentionBlock) and "forward" not in module.__dict__:
                module.forward = functools.partial(checkpoint, module.forward, use_reentrant=False)  # type: ignore[method-assign]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in ``[0, 1]`` -> scaled latents (the posterior mean, no gradient)."""
        autoencoder = self._model().autoencoder
        with torch.no_grad():
            pixels = images.to(device=autoencoder.device, dtype=autoencoder.dtype) * 2 - 1
            return autoencoder.encode(pixels)

    def encode_prompts(self, prompts: list[str]) -> TrainingConditioning:
        """One text embedding per prompt (gradients flow into text-encoder adapters)."""
        model: Any = self._model()
        device = model.text_encoder.device
        if getattr(model, "tokenizer_2", None) is not None:
            tokens = (model.tokenizer(prompts).to(device), model.tokenizer_2(prompts).to(device))
            embedding, pooled = model.text_encoder(*tokens)
            return TrainingConditioning(embedding, pooled)
        return TrainingConditioning(model.text_encoder(model.tokenizer(prompts).to(device)))

    def training_loss(
        self, latents: torch.Tensor, conditioning: TrainingConditioning, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample mean squared error ``[B]`` (float32) of the UNet's prediction at ``timesteps``."""
        model = self._model()
        device, dtype = model.device, model.dtype
        alpha_bar = noise_schedule(model.scheduler_config).to(device)[timesteps.to(device)]
        alpha_bar = alpha_bar.view(-1, *([1] * (latents.dim() - 1)))
        latents, noise = latents.to(device=device, dtype=torch.float32), noise.to(device=device, dtype=torch.float32)
        noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
        if self.prediction_type == "v_prediction":
            target = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents
        else:
            target = noise
        model.unet.set_timestep(timesteps.to(device))
        model.unet.set_clip_text_embedding(conditioning.text_embedding.to(device=device, dtype=dtype))
        if conditioning.pooled_text_embedding is not None:
            height, width = (side * model.vae_scale_factor for side in latents.shape[-2:])
            ids = torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=dtype)
            unet: Any = model.unet
            unet.set_pooled_text_embedding(conditioning.pooled_text_embedding.to(device=device, dtype=dtype))
            unet.set_time_ids(ids.repeat(latents.shape[0], 1))
        prediction = model.unet(noisy.to(dtype))
        error = (prediction.float() - target) ** 2
        return error.flatten(1).mean(dim=1)
