"""The ControlNet adapter: a copy of the UNet encoder fed with a condition image, adding into ``unet.residuals``.

Injected, it takes the place of the UNet's ``ResetResiduals`` layer and holds it as its first child,
followed by its :class:`ControlNetEncoder` (a ``Passthrough``)::

    SD1UNet
    ├── ControlNet(name='canny', scale=1.0)          <- was ResetResiduals
    │   ├── ResetResiduals                           (the UNet's, unchanged)
    │   └── ControlNetEncoder                        (reads the latents, returns them unchanged)
    │       ├── TimestepEncoder                      (its own time embedding, from the UNet's contexts)
    │       ├── DownBlocks
    │       │   ├── InputConv: Conv2d, ConditionEncoder, ControlResidual(n=0)
    │       │   └── DownBlock_1..N: ... each skip ends with ControlResidual(n)
    │       ├── MiddleBlock
    │       └── ControlResidual(n=last)
    ├── TimestepEncoder
    ├── DownBlocks ...

So every forward, right after the residuals are reset, each ControlNet adds
``scale * zero_conv_n(h_n)`` into ``residuals[n]``; the UNet's down path then adds its own skips
on top, and ``AddResidual`` adds the middle entry after the middle block. Several ControlNets stack
(their residuals add) and eject in any order.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from PIL.Image import Image as PILImage
from refiners_sd import UNet, diffusers_module_map
from refiners_sd.unet.blocks import DownBlocks, InputConv, MiddleBlock, TimestepEncoder
from refiners_sd.unet.layers import ResetResiduals, ResidualAccumulator
from refiners_sd.unet.model import build_unet_layers
from torch import nn

from refiners_controlnet.config import ControlNetConfig, check_compatible, residual_layout
from refiners_controlnet.layers import CONTROLNET_CONTEXT, ConditionEncoder, ControlResidual
from refiners_core import Adapter, AdapterError, Chain, Passthrough
from refiners_core.context import root_of
from refiners_core.contracts import ImageInput
from refiners_core.images import image_to_tensor
from refiners_core.module import get_parent
from refiners_core.module_map import load_by_module_map, state_dict_by_module_map
from refiners_core.weights import save_model_folder

__all__ = ["ControlNet", "ControlNetEncoder"]

Device = torch.device | str | None

# diffusers ControlNetModel modules that come from the UNet encoder
_ENCODER_PREFIXES = ("time_embedding", "add_embedding", "conv_in", "down_blocks", "mid_block")


def guess_mode_factors(count: int) -> list[float]:
    """Per-residual factors of guess mode: ``count`` values log-spaced from 0.1 to 1.0 (the middle gets 1.0)."""
    return [float(value) for value in torch.logspace(-1, 0, count)]


class ControlNetEncoder(Passthrough):
    """The ControlNet network (diffusers ``ControlNetModel``): runs on the latents for its side effects on
    ``unet.residuals`` and returns them unchanged.

    Built from a :class:`ControlNetConfig` with the refiners-sd UNet blocks: ``TimestepEncoder``,
    ``DownBlocks`` (its ``InputConv`` gains a :class:`ConditionEncoder`; every ``ResidualAccumulator(n)``
    becomes a :class:`ControlResidual`), ``MiddleBlock`` and the middle :class:`ControlResidual`.
    Its weights map to diffusers names with :meth:`diffusers_module_map`.
    """

    def __init__(
        self, config: ControlNetConfig, name: str, device: Device = None, dtype: torch.dtype | None = None
    ) -> None:
        source = Chain(*build_unet_layers(config.unet, device=device, dtype=dtype, encoder_only=True))
        modules = {
            key: module
            for key, module in diffusers_module_map(source).items()
            if key.split(".")[0] in _ENCODER_PREFIXES
        }
        timestep, down, middle = (
            next(child for child in source if isinstance(child, kind))
            for kind in (TimestepEncoder, DownBlocks, MiddleBlock)
        )
        for child in (timestep, down, middle):
            source.remove(child)
        layout = residual_layout(config.unet)
        pool = config.global_pool_conditions
        condition = ConditionEncoder(
            name,
            config.unet.block_out_channels[0],
            config.conditioning_channels,
            config.conditioning_embedding_out_channels,
            bgr=config.channel_order == "bgr",
            device=device,
            dtype=dtype,
        )
        next(child for child in down if isinstance(child, InputConv)).insert_before_type(ResidualAccumulator, condition)
        for accumulator, parent in list(down.walk(ResidualAccumulator)):
            assert isinstance(accumulator, ResidualAccumulator)  # walk(type) yields only that type
            n = accumulator.n
            residual = ControlResidual(n, layout[n][0], global_pool=pool, device=device, dtype=dtype)
            position = parent.children_names.index(parent.name_of(accumulator))
            parent.remove(accumulator)
            parent.insert(position, residual)
            modules[f"controlnet_down_blocks.{n}"] = residual.convolution
        last = len(layout) - 1
        middle_residual = ControlResidual(last, layout[last][0], global_pool=pool, device=device, dtype=dtype)
        modules["controlnet_mid_block"] = middle_residual.convolution
        convolutions = condition.convolutions
        modules["controlnet_cond_embedding.conv_in"] = convolutions[0]
        for index, convolution in enumerate(convolutions[1:-1]):
            modules[f"controlnet_cond_embedding.blocks.{index}"] = convolution
        modules["controlnet_cond_embedding.conv_out"] = convolutions[-1]
        super().__init__(timestep, down, middle, middle_residual)
        self.config = config
        self.__dict__["_diffusers_modules"] = modules

    def diffusers_module_map(self) -> dict[str, nn.Module]:
        """``{diffusers ControlNetModel module name: our layer}`` for every weighted layer."""
        return dict(self.__dict__["_diffusers_modules"])

    @property
    def residuals(self) -> list[ControlResidual]:
        """The :class:`ControlResidual` layers, by residual index (the middle one last)."""
        return sorted(self.layers(ControlResidual), key=lambda residual: residual.n)

    @property
    def condition_encoder(self) -> ConditionEncoder:
        """The :class:`ConditionEncoder` (diffusers ``controlnet_cond_embedding``)."""
        return self.ensure_find(ConditionEncoder)

    def diffusers_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under diffusers ``ControlNetModel`` names."""
        return state_dict_by_module_map(self.diffusers_module_map())

    def load_diffusers_state_dict(self, state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
        """Load diffusers-named weights (a meta-built encoder gets the tensors assigned as they are).

        Missing, unexpected and mis-shaped keys raise :class:`WeightsError` listing them; nothing is loaded then.
        """
        load_by_module_map(self, self.diffusers_module_map(), state_dict, source=f"ControlNet weights from {source}")

    def reset_parameters(self) -> None:
        """Initialise every layer as torch does, with zero convolutions (and the condition encoder's output
        convolution) at zero: the ControlNet then leaves the UNet's output unchanged, as at the start of training."""
        for module in self.modules():
            if module is self:
                continue
            reset_parameters = getattr(module, "reset_parameters", None)
            if reset_parameters is not None:
                reset_parameters()
        with torch.no_grad():
            for convolution in [residual.convolution for residual in self.residuals] + [
                self.condition_encoder.convolutions[-1]
            ]:
                convolution.weight.zero_()
                if convolution.bias is not None:
                    convolution.bias.zero_()


class ControlNet(Chain, Adapter[ResetResiduals]):
    """A ControlNet adapter for an SD1.5 or SDXL :class:`~refiners_sd.UNet`.

    Load one with :meth:`from_diffusers`, then ``inject()`` it, give it its condition with
    :meth:`set_condition` and run the UNet as usual. ``scale`` can be changed at any time; with
    ``guess_mode`` the residuals are scaled from 0.1 (first skip) to 1.0 (middle block), log-spaced.

    It takes the place of the UNet's ``ResetResiduals`` layer, holding it as its first child, followed
    by its :class:`ControlNetEncoder`. The encoder reads the UNet's contexts (timestep, text embedding,
    SDXL time ids and pooled embedding) and its condition from the ``controlnet`` context, key ``name``.
    """

    def __init__(
        self,
        target: UNet,
        config: ControlNetConfig | Mapping[str, Any],
        name: str = "controlnet",
        scale: float = 1.0,
        guess_mode: bool = False,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Build a ControlNet for ``target`` from ``config`` (a :class:`ControlNetConfig` or a diffusers mapping).

        Weights are initialised as for training (zero convolutions at zero) on ``device``/``dtype``
        (default: the UNet's); ``device="meta"`` builds without memory, for loading weights afterwards.

        Raises:
            AdapterError: ``target`` is not a UNet, or the configuration does not fit it.
        """
        if not isinstance(target, UNet):
            raise AdapterError(f"a ControlNet is injected into a refiners_sd UNet, got {type(target).__name__}")
        if not isinstance(config, ControlNetConfig):
            config = ControlNetConfig.from_dict(config)
        check_compatible(config, target.config, f"ControlNet {name!r}")
        if device is None:
            device = target.device
        if dtype is None:
            dtype = target.dtype
        encoder = ControlNetEncoder(config, name, device="meta", dtype=dtype)
        if torch.device(device or "cpu").type != "meta":
            encoder.to_empty(device=device)
            encoder.reset_parameters()
        reset = target.ensure_find(ResetResiduals)
        with self.setup_adapter(reset):
            super().__init__(reset, encoder)
        self.config = config
        self.__dict__["_name"] = name
        self.__dict__["_condition"] = None
        self._scale = float(scale)
        self._guess_mode = bool(guess_mode)
        self._apply_scales()

    def init_context(self) -> dict[str, dict[str, Any]]:
        """Declares the ``controlnet`` context (condition images by ControlNet name)."""
        return {CONTROLNET_CONTEXT: {}}

    # ---- loading -----------------------------------------------------------------------------------

    @classmethod
    def from_diffusers(
        cls,
        unet: UNet,
        path: str | Path | Mapping[str, torch.Tensor],
        name: str = "controlnet",
        scale: float = 1.0,
        *,
        guess_mode: bool = False,
        config: str | Path | Mapping[str, Any] | ControlNetConfig | None = None,
        variant: str | None = None,
        device: Device = None,
        dtype: torch.dtype | None = None,
        allow_pickle: bool = False,
    ) -> ControlNet:
        """Load a ControlNet for ``unet`` (not injected yet: call ``inject()``).

        ``path``: a diffusers ControlNet folder (``config.json`` + ``diffusion_pytorch_model[.fp16].safetensors``;
        ``variant=`` picks one), a single safetensors file with diffusers keys or in the original
        ``control_model.*`` layout of the lllyasviel releases, or a state dict. The architecture comes from
        ``config`` or the folder's ``config.json``, else is inferred from tensor shapes and the UNet.
        Tensors are read straight onto ``device``/``dtype`` (default: the UNet's). Pickled files are
        refused unless ``allow_pickle=True``.

        Raises:
            WeightsError: unreadable file, unknown layout, missing/unexpected/mis-shaped keys (all listed).
            AdapterError: the ControlNet's architecture does not fit ``unet``.
        """
        from refiners_controlnet.formats import read_controlnet_weights

        device = device if device is not None else unet.device
        dtype = dtype if dtype is not None else unet.dtype
        state, resolved, source = read_controlnet_weights(
            path, unet.config, config=config, variant=variant, device=device, dtype=dtype, allow_pickle=allow_pickle
        )
        check_compatible(resolved, unet.config, f"ControlNet {source}")
        controlnet = cls(unet, resolved, name=name, scale=scale, guess_mode=guess_mode, device="meta", dtype=dtype)
        controlnet.encoder.load_diffusers_state_dict(state, source)
        return controlnet

    # ---- structure ---------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The key of this ControlNet's condition in the ``controlnet`` context (unique within a UNet)."""
        return self.__dict__["_name"]

    @property
    def encoder(self) -> ControlNetEncoder:
        """The :class:`ControlNetEncoder` (the network itself)."""
        return self["ControlNetEncoder"]  # type: ignore[return-value]

    def save_diffusers(self, path: str | Path) -> Path:
        """Write the network as a diffusers ``ControlNetModel`` folder (``config.json`` and
        ``diffusion_pytorch_model.safetensors``) and return the folder; :meth:`from_diffusers` reads it back."""
        state = self.encoder.diffusers_state_dict()
        return save_model_folder(path, self.config.to_dict(), state, "diffusion_pytorch_model.safetensors")

    # ---- scale, guess mode, condition --------------------------------------------------------------

    @property
    def scale(self) -> float:
        """Multiplies every residual this ControlNet adds (0 turns it off)."""
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        self._scale = float(value)
        self._apply_scales()

    @property
    def guess_mode(self) -> bool:
        """Scale residual ``i`` of ``n`` by ``logspace(-1, 0, n)[i]`` times ``scale`` (not global-pool models)."""
        return self._guess_mode

    @guess_mode.setter
    def guess_mode(self, value: bool) -> None:
        self._guess_mode = bool(value)
        self._apply_scales()

    def _apply_scales(self) -> None:
        residuals = self.encoder.residuals
        if self._guess_mode and not self.config.global_pool_conditions:
            factors = guess_mode_factors(len(residuals))
        else:
            factors = [1.0] * len(residuals)
        for residual, factor in zip(residuals, factors, strict=True):
            residual.multiplier.scale = self._scale * factor

    def set_image(self, image: ImageInput) -> None:
        """Use the condition ``image`` from now on (the adapter-family contract's ``set_image``): see
        :meth:`set_condition`."""
        self.set_condition(image)

    def set_condition(self, condition: ImageInput) -> None:
        """Set the condition image: a PIL image, or ``[B, C, H, W]`` with values in [0, 1]; ``H, W`` 8 times the
        latent size.

        A PIL image is converted to the model's channels (RGB, or grayscale for one-channel ControlNets) in
        [0, 1]. It is cast to the latents' device and dtype at each forward. ``B`` is the latent batch size, or 1.
        """
        if isinstance(condition, PILImage):
            condition = image_to_tensor(condition, mode="L" if self.config.conditioning_channels == 1 else "RGB")
        if not isinstance(condition, torch.Tensor) or condition.dim() != 4:
            raise ValueError(f"ControlNet {self.name!r}: the condition must be a [B, C, H, W] tensor")
        if condition.shape[1] != self.config.conditioning_channels:
            raise ValueError(
                f"ControlNet {self.name!r}: condition has {condition.shape[1]} channels, "
                f"expected {self.config.conditioning_channels}"
            )
        self.__dict__["_condition"] = condition
        self.set_context(CONTROLNET_CONTEXT, {self.name: condition})

    @property
    def condition(self) -> torch.Tensor | None:
        """The condition image given to :meth:`set_condition` (``None`` before)."""
        return self.__dict__["_condition"]

    # ---- injection ---------------------------------------------------------------------------------

    def inject(self, parent: Chain | None = None) -> ControlNet:
        """Put the ControlNet in place of the UNet's ``ResetResiduals`` (or of a ControlNet already there).

        Raises:
            AdapterError: another ControlNet with the same ``name`` is injected in the same UNet.
        """
        anchor = parent if parent is not None else get_parent(self.target)
        if anchor is not None:
            root = root_of(anchor)
            if isinstance(root, Chain):
                for other in root.layers(ControlNet, recurse=True):
                    if other is not self and other.name == self.name:
                        raise AdapterError(
                            f"a ControlNet named {self.name!r} is already injected: give each ControlNet its own name"
                        )
        super().inject(parent)
        if self.condition is not None:
            self.set_context(CONTROLNET_CONTEXT, {self.name: self.condition})
        return self

    def eject(self) -> None:
        """Remove the ControlNet (any order among several); the UNet's structure and outputs are restored."""
        if self.is_injected:
            self.provider.contexts.get(CONTROLNET_CONTEXT, {}).pop(self.name, None)
        super().eject()

    def remove(self, module: nn.Module | None = None) -> Chain:
        """Without argument, eject the ControlNet (the adapter-family contract's ``remove()``); with a child
        ``module``, remove that child as :meth:`Chain.remove` does. Returns ``self``."""
        if module is not None:
            return super().remove(module)
        self.eject()
        return self

    def extra_repr(self) -> str:
        return f"name={self.name!r}, scale={self.scale}" + (", guess_mode=True" if self.guess_mode else "")
