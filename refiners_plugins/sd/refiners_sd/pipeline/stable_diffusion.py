"""Text-to-image models tying a UNet, text encoder(s), tokenizer(s), a VAE and a solver together.

:class:`StableDiffusion1` and :class:`StableDiffusionXL` follow diffusers' ``StableDiffusionPipeline`` and
``StableDiffusionXLPipeline`` step for step (prompt encoding, initial noise, guidance, solver updates), so
that equal components, solver and seed give equal latents.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from refiners_core.errors import RefinersError
from refiners_sd.clip import CLIPTextEncoder, CLIPTextEncoderG, CLIPTextEncoderL, CLIPTokenizer, DoubleTextEncoder
from refiners_sd.pipeline.guidance import classifier_free_guidance, uses_guidance
from refiners_sd.pipeline.layout import PipelineLayout, read_layout
from refiners_sd.pipeline.naming import component_conventions, component_module_names
from refiners_sd.pipeline.solver_config import solver_from_config
from refiners_sd.pipeline.training import TrainingMixin
from refiners_sd.solvers import Solver
from refiners_sd.unet.loading import load_unet
from refiners_sd.unet.model import UNet
from refiners_sd.unet.sd1 import SD1UNet
from refiners_sd.unet.sdxl import SDXLUNet
from refiners_sd.vae import AutoencoderKL, tensor_to_image

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["Conditioning", "LatentDiffusion", "StableDiffusion1", "StableDiffusionXL", "StepCallback", "load_pipeline"]

StepCallback = Callable[[int, int], None]
"""Called after each denoising step as ``callback(steps_done, total_steps)``."""

Device = torch.device | str | None


class NonFiniteLatentsError(RefinersError, ValueError):
    """The latents became NaN or infinite during denoising (the image would be black): the cause is named."""


def _non_finite_cause(step: int, total: int, timestep: torch.Tensor, solver: Solver, prediction: torch.Tensor) -> str:
    where = f"latents became NaN or infinite at step {step + 1}/{total} (timestep {int(timestep)})"
    if not bool(torch.isfinite(prediction).all()):
        cause = (
            "the UNet's prediction was already NaN or infinite: check the weights and scales of the adapters "
            "(a NaN or huge LoRA scale) and the dtype (float16 overflow)"
        )
    else:
        cause = f"the {type(solver).__name__} update produced them (step count {solver.num_inference_steps})"
    return f"{where}: {cause}"


@dataclass
class Conditioning:
    """What the UNet is conditioned on for one generation (batch ``[negative, positive]`` under guidance)."""

    text_embedding: torch.Tensor
    pooled_text_embedding: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None


class LatentDiffusion:
    """The parts shared by SD1 and SDXL: noise, the guided denoising loop, decoding.

    Attributes:
        unet, autoencoder: the models (adapters are injected into ``unet``).
        scheduler_config: the noise schedule solvers are built on (diffusers ``scheduler_config.json``).
        solver_name: the solver :meth:`make_solver` builds (``ddim``, ``euler``, ``dpm++2m``).
    """

    topology: str
    """``sd15`` or ``sdxl``, set by each model class."""

    def __init__(
        self,
        unet: UNet,
        autoencoder: AutoencoderKL,
        scheduler_config: Mapping[str, Any] | None = None,
        solver: str = "ddim",
    ) -> None:
        self.unet = unet
        self.autoencoder = autoencoder
        self.scheduler_config: dict[str, Any] = dict(scheduler_config or {})
        self.solver_name = solver
        solver_from_config(solver, 1, self.scheduler_config)  # fail early on a bad name or schedule

    # ---- properties ------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Where the UNet's weights are."""
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's weight dtype (latents and embeddings use it)."""
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel: ``2 ** (len(block_out_channels) - 1)`` (8 for the real models)."""
        return 2 ** (len(self.autoencoder.config.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        """Default image side: the UNet's ``sample_size`` times :attr:`vae_scale_factor` (512 / 1024)."""
        sample_size = self.unet.config.raw.get("sample_size") or (128 if self.unet.topology == "sdxl" else 64)
        return int(sample_size) * self.vae_scale_factor

    @property
    def architecture(self) -> str:
        """The base-model family name (``sd15`` or ``sdxl``): the base-model contract's architecture."""
        return self.topology

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this (:attr:`vae_scale_factor`)."""
        return self.vae_scale_factor

    def components(self) -> dict[str, nn.Module]:
        """The named components adapters target: ``unet``, ``text_encoder`` (``text_encoder_2``), ``vae``."""
        return {"unet": self.unet, **self.text_encoders(), "vae": self.autoencoder}

    def text_encoders(self) -> dict[str, nn.Module]:
        """The text encoders by component name (``text_encoder``, and ``text_encoder_2`` for SDXL)."""
        raise NotImplementedError

    def conventions(self, component: str) -> tuple[str, ...]:
        """The naming conventions :meth:`module_names` knows for ``component``."""
        return component_conventions(component) if component in self.components() else ()

    def module_names(self, component: str, convention: str) -> dict[str, nn.Module]:
        """``{module name in convention: layer}`` of a component: ``refiners``, ``diffusers`` and ``ldm`` for
        the UNet, ``refiners`` and ``transformers`` for the text encoders, ``refiners`` for the VAE.

        Raises:
            RefinersError: unknown component or convention.
        """
        return component_module_names(self.components(), component, convention)

    def make_solver(self, steps: int, solver: str | None = None) -> Solver:
        """A fresh solver for ``steps`` steps on this model's noise schedule."""
        return solver_from_config(solver or self.solver_name, steps, self.scheduler_config)

    # ---- to be provided by each model ------------------------------------------------------------

    def encode_prompt(self, prompt: str, negative_prompt: str | None = None, guidance: bool = True) -> Conditioning:
        """Text embeddings for ``prompt`` (with guidance: batch ``[negative, prompt]``)."""
        raise NotImplementedError

    def add_size_conditioning(self, conditioning: Conditioning, height: int, width: int) -> Conditioning:
        """Add what the model needs to know about the image size (SDXL's time ids); identity by default."""
        return conditioning

    def set_conditioning(self, conditioning: Conditioning) -> None:
        """Write ``conditioning`` into the UNet's contexts."""
        self.unet.set_clip_text_embedding(conditioning.text_embedding)

    # ---- generation ------------------------------------------------------------------------------

    def initial_latents(self, seed: int, height: int, width: int, solver: Solver) -> torch.Tensor:
        """Seeded noise ``[1, C, H / f, W / f]`` drawn on the CPU (same numbers on every device), times the
        solver's ``init_noise_sigma``."""
        factor = self.vae_scale_factor
        if height % factor or width % factor:
            raise ValueError(f"height and width must be multiples of {factor}, got {height}x{width}")
        shape = (1, self.unet.config.in_channels, height // factor, width // factor)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn(shape, generator=generator, dtype=self.dtype).to(self.device)
        return noise * solver.init_noise_sigma

    @torch.no_grad()
    def denoise(
        self,
        latents: torch.Tensor,
        conditioning: Conditioning,
        solver: Solver,
        guidance: float = 7.5,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """Run every step of ``solver`` from ``latents``; returns the final latents."""
        guided = uses_guidance(guidance)
        self.set_conditioning(conditioning)
        total = solver.num_inference_steps
        for step, timestep in enumerate(solver.timesteps):
            model_input = torch.cat([latents, latents]) if guided else latents
            model_input = solver.scale_model_input(model_input, step)
            self.unet.set_timestep(timestep.to(self.device))
            prediction = self.unet(model_input)
            if guided:
                prediction = classifier_free_guidance(prediction, guidance)
            latents = solver(latents, prediction, step)
            if not bool(torch.isfinite(latents).all()):
                raise NonFiniteLatentsError(_non_finite_cause(step, total, timestep, solver, prediction))
            if callback is not None:
                callback(step + 1, total)
        return latents

    @torch.no_grad()
    def generate_latents(
        self,
        prompt: str,
        *,
        negative_prompt: str | None = None,
        steps: int = 30,
        guidance: float = 7.5,
        seed: int = 0,
        width: int | None = None,
        height: int | None = None,
        solver: str | None = None,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """The denoised latents for ``prompt`` (before the VAE): see :meth:`generate`."""
        height = height or self.default_size
        width = width or self.default_size
        step_solver = self.make_solver(steps, solver)
        conditioning = self.encode_prompt(prompt, negative_prompt, guidance=uses_guidance(guidance))
        conditioning = self.add_size_conditioning(conditioning, height, width)
        latents = self.initial_latents(seed, height, width, step_solver)
        return self.denoise(latents, conditioning, step_solver, guidance, callback)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> Image.Image:
        """Latents -> RGB PIL image through the VAE (in the VAE's own dtype)."""
        image = self.autoencoder.decode(latents.to(device=self.autoencoder.device, dtype=self.autoencoder.dtype))
        return tensor_to_image(image)

    def generate(
        self,
        prompt: str,
        *,
        negative_prompt: str | None = None,
        steps: int = 30,
        guidance: float = 7.5,
        seed: int = 0,
        width: int | None = None,
        height: int | None = None,
        solver: str | None = None,
        callback: StepCallback | None = None,
    ) -> Image.Image:
        """Generate one image for ``prompt`` with every adapter currently injected (the base-model contract).

        Args:
            negative_prompt: what to steer away from (``None``: the empty prompt; SDXL: zero embeddings
                when the model says ``force_zeros_for_empty_prompt``).
            steps: denoising steps. guidance: classifier-free guidance scale (``<= 1`` disables it).
            seed: seeds the initial noise (drawn on the CPU). width, height: multiples of 8 (default: the
                model's native size). solver: overrides :attr:`solver_name` for this call.
            callback: ``callback(steps_done, total)`` after each step (progress bars).
        """
        latents = self.generate_latents(
            prompt,
            negative_prompt=negative_prompt,
            steps=steps,
            guidance=guidance,
            seed=seed,
            width=width,
            height=height,
            solver=solver,
            callback=callback,
        )
        return self.decode(latents)


def _tokens(tokenizer: CLIPTokenizer, text: str, device: torch.device) -> torch.Tensor:
    return tokenizer(text).to(device)


class StableDiffusion1(LatentDiffusion, TrainingMixin):
    """Stable Diffusion 1.x: CLIP ViT-L text encoder (last hidden state), SD1 UNet, KL VAE.

    Trainable (:class:`refiners_core.TrainablePipeline`) through
    :class:`~refiners_sd.pipeline.training.TrainingMixin`.
    """

    topology = "sd15"

    def __init__(
        self,
        unet: UNet,
        text_encoder: CLIPTextEncoder,
        tokenizer: CLIPTokenizer,
        autoencoder: AutoencoderKL,
        scheduler_config: Mapping[str, Any] | None = None,
        solver: str = "ddim",
    ) -> None:
        super().__init__(unet, autoencoder, scheduler_config, solver)
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer

    def text_encoders(self) -> dict[str, nn.Module]:
        """``{"text_encoder": CLIP ViT-L}``."""
        return {"text_encoder": self.text_encoder}

    @torch.no_grad()
    def encode_prompt(self, prompt: str, negative_prompt: str | None = None, guidance: bool = True) -> Conditioning:
        """``[negative, prompt]`` last hidden states ``[2, 77, D]`` (``[1, 77, D]`` without guidance)."""
        texts = [negative_prompt or "", prompt] if guidance else [prompt]
        device = self.text_encoder.device
        embeddings = [self.text_encoder(_tokens(self.tokenizer, text, device)) for text in texts]
        return Conditioning(text_embedding=torch.cat(embeddings).to(device=self.device, dtype=self.dtype))

    @classmethod
    def from_diffusers(
        cls, folder: str | Path, device: Device = None, dtype: torch.dtype | None = None, solver: str = "ddim"
    ) -> StableDiffusion1:
        """Load a diffusers SD1.x pipeline folder (``unet/``, ``text_encoder/``, ``tokenizer/``, ``vae/``,
        ``scheduler/scheduler_config.json``); ``dtype=None`` keeps float32."""
        layout = read_layout(folder)
        if layout.topology != "sd15":
            raise ValueError(f"{layout.root} holds an {layout.topology} pipeline: use StableDiffusionXL")
        return cls(**_common_parts(layout, SD1UNet, device, dtype), solver=solver)  # type: ignore[arg-type]


class StableDiffusionXL(LatentDiffusion, TrainingMixin):
    """Stable Diffusion XL: two CLIP text encoders (penultimate states, bigG's pooled projection), SDXL UNet
    with ``text_time`` conditioning, KL VAE.

    Attributes:
        force_zeros_for_empty_prompt: without a negative prompt, guide against zero embeddings (SDXL base).
    """

    topology = "sdxl"

    def __init__(
        self,
        unet: UNet,
        text_encoder: DoubleTextEncoder,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        autoencoder: AutoencoderKL,
        scheduler_config: Mapping[str, Any] | None = None,
        solver: str = "ddim",
        force_zeros_for_empty_prompt: bool = True,
    ) -> None:
        super().__init__(unet, autoencoder, scheduler_config, solver)
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt

    def text_encoders(self) -> dict[str, nn.Module]:
        """``{"text_encoder": CLIP ViT-L, "text_encoder_2": OpenCLIP ViT-bigG}`` (diffusers' component names)."""
        return {"text_encoder": self.text_encoder.text_encoder_l, "text_encoder_2": self.text_encoder.text_encoder_g}

    def _encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.text_encoder.device
        tokens = (_tokens(self.tokenizer, text, device), _tokens(self.tokenizer_2, text, device))
        embedding, pooled = self.text_encoder(*tokens)
        return embedding, pooled

    @torch.no_grad()
    def encode_prompt(self, prompt: str, negative_prompt: str | None = None, guidance: bool = True) -> Conditioning:
        """Concatenated penultimate states ``[B, 77, D_l + D_g]`` and pooled embeddings ``[B, P]``."""
        embedding, pooled = self._encode(prompt)
        if guidance:
            if negative_prompt is None and self.force_zeros_for_empty_prompt:
                negative, negative_pooled = torch.zeros_like(embedding), torch.zeros_like(pooled)
            else:
                negative, negative_pooled = self._encode(negative_prompt or "")
            embedding, pooled = torch.cat([negative, embedding]), torch.cat([negative_pooled, pooled])
        device, dtype = self.device, self.dtype
        return Conditioning(
            text_embedding=embedding.to(device=device, dtype=dtype),
            pooled_text_embedding=pooled.to(device=device, dtype=dtype),
        )

    def add_size_conditioning(self, conditioning: Conditioning, height: int, width: int) -> Conditioning:
        """Time ids ``(original H, W, crop top, left, target H, W)`` = ``(height, width, 0, 0, height, width)``."""
        batch = conditioning.text_embedding.shape[0]
        ids = torch.tensor([[height, width, 0, 0, height, width]], device=self.device, dtype=self.dtype)
        conditioning.time_ids = ids.repeat(batch, 1)
        return conditioning

    def set_conditioning(self, conditioning: Conditioning) -> None:
        """Text embedding, pooled embedding and time ids into the UNet's contexts."""
        if conditioning.pooled_text_embedding is None or conditioning.time_ids is None:
            raise ValueError("SDXL conditioning needs a pooled text embedding and time ids")
        assert isinstance(self.unet, SDXLUNet)
        super().set_conditioning(conditioning)
        self.unet.set_pooled_text_embedding(conditioning.pooled_text_embedding)
        self.unet.set_time_ids(conditioning.time_ids)

    @classmethod
    def from_diffusers(
        cls, folder: str | Path, device: Device = None, dtype: torch.dtype | None = None, solver: str = "ddim"
    ) -> StableDiffusionXL:
        """Load a diffusers SDXL pipeline folder (``text_encoder_2/`` and ``tokenizer_2/`` besides SD1's parts)."""
        layout = read_layout(folder)
        if layout.topology != "sdxl":
            raise ValueError(f"{layout.root} holds an {layout.topology} pipeline: use StableDiffusion1")
        parts = _common_parts(layout, SDXLUNet, device, dtype)
        encoder_l = parts.pop("text_encoder")
        encoder_g = CLIPTextEncoderG.from_transformers(layout.part("text_encoder_2"), device=device, dtype=dtype)
        return cls(
            text_encoder=DoubleTextEncoder(encoder_l, encoder_g),  # type: ignore[arg-type]
            tokenizer_2=CLIPTokenizer.from_pretrained(layout.part("tokenizer_2")),
            solver=solver,
            force_zeros_for_empty_prompt=layout.force_zeros_for_empty_prompt,
            **parts,  # type: ignore[arg-type]
        )


def _vae_dtype(layout: PipelineLayout, dtype: torch.dtype | None) -> torch.dtype | None:
    """float32 for VAEs whose config asks for it (``force_upcast``) when the rest runs in float16."""
    from refiners_core.config import read_config
    from refiners_core.errors import ConfigError

    try:
        force_upcast = bool(read_config(layout.part("vae"), "VAE config").get("force_upcast", False))
    except ConfigError:
        force_upcast = False
    return torch.float32 if dtype == torch.float16 and force_upcast else dtype


def _common_parts(
    layout: PipelineLayout, unet_class: type[UNet], device: Device, dtype: torch.dtype | None
) -> dict[str, Any]:
    dtype = dtype or torch.float32
    return {
        "unet": load_unet(layout.part("unet"), device=device, dtype=dtype, unet_class=unet_class),
        "text_encoder": CLIPTextEncoderL.from_transformers(layout.part("text_encoder"), device=device, dtype=dtype),
        "tokenizer": CLIPTokenizer.from_pretrained(layout.part("tokenizer")),
        "autoencoder": AutoencoderKL.from_diffusers(layout.part("vae"), device=device, dtype=_vae_dtype(layout, dtype)),
        "scheduler_config": layout.scheduler_config,
    }


def load_pipeline(
    path: str | Path,
    device: Device = None,
    dtype: torch.dtype | None = None,
    solver: str = "ddim",
    *,
    vae: str | Path | None = None,
    allow_pickle: bool = False,
) -> StableDiffusion1 | StableDiffusionXL:
    """Load :class:`StableDiffusion1` or :class:`StableDiffusionXL` (detected) from a diffusers pipeline folder
    or a single-file checkpoint, offline.

    Args:
        path: a diffusers pipeline folder, or a single ``.safetensors`` checkpoint in the A1111/ComfyUI layout
            (see :func:`refiners_sd.single_file.load_single_file`); a pickled ``.ckpt`` only with
            ``allow_pickle=True`` (read with ``torch.load(weights_only=True)``).
        dtype: weight dtype (``None``: float32).
        solver: ``ddim``, ``euler`` or ``dpm++2m``.
        vae: swap the VAE for a diffusers VAE folder or a single VAE file (see
            :func:`refiners_sd.single_file.load_vae`).

    Raises:
        WeightsError: naming the file and what is wrong with it (missing, truncated, another architecture,
            unknown keys). PickleRefusedError: a pickled file without the opt-in.
    """
    from refiners_sd.single_file.loading import load_single_file, load_vae

    source = Path(path).expanduser()
    model: StableDiffusion1 | StableDiffusionXL
    if source.is_file():
        model = load_single_file(source, device=device, dtype=dtype, solver=solver, allow_pickle=allow_pickle)
    else:
        layout = read_layout(source)
        model_class = StableDiffusionXL if layout.topology == "sdxl" else StableDiffusion1
        model = model_class.from_diffusers(layout.root, device=device, dtype=dtype, solver=solver)
    if vae is not None:
        model.autoencoder = load_vae(vae, model.topology, device=device, dtype=dtype, allow_pickle=allow_pickle)  # type: ignore[arg-type]
    return model
