"""T2IAdapter: a T2I-Adapter network attached to a refiners-sd UNet, injected and ejected as a whole."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from PIL.Image import Image as PILImage
from refiners_sd.unet.model import UNet
from torch import nn

import refiners_core as rc
from refiners_core import Chain
from refiners_core.contracts import ImageInput
from refiners_core.errors import AdapterError, WeightsError
from refiners_core.module_map import state_dict_by_module_map
from refiners_core.weights import save_model_folder
from refiners_t2i.config import ADAPTER_TYPES, T2IConfig, infer_config
from refiners_t2i.encoder import T2IEncoder, diffusers_module_map, load_diffusers_weights
from refiners_t2i.formats import detect_format, read_weights, tencentarc_to_diffusers
from refiners_t2i.injection import (
    T2I_CONTEXT,
    InjectionPoint,
    T2IFeature,
    T2IFeatureAdapter,
    injected_names,
    injection_points,
    target_layer,
)

__all__ = ["T2IAdapter"]


def _device_dtype(unet: UNet) -> tuple[torch.device, torch.dtype]:
    return unet.device, unet.dtype


class T2IAdapter(Chain):
    """A T2I-Adapter for a refiners-sd UNet: its network (``T2IEncoder``) and the points where its features enter.

    Usage::

        adapter = T2IAdapter.from_diffusers(unet, "t2i-adapter-canny-sdxl-1.0", name="canny", scale=0.8)
        adapter.inject()
        adapter.set_condition(edges)        # [B, C, H, W] in [0, 1], H, W = 8x the latents
        ...                                 # denoise: every UNet call adds the features
        adapter.eject()                     # the UNet's exact original layers are back

    Features are computed once per :meth:`set_condition` (``adapter(image)`` runs the network and returns
    them) and stored in the UNet's ``t2i_adapter`` context under the adapter's ``name``; each UNet call
    only adds ``scale * feature`` at the injection points (see :mod:`refiners_t2i.injection`). Call
    :meth:`set_condition` again after moving the UNet to another device or dtype. Gradients follow the
    caller's mode (wrap in ``torch.no_grad()`` for inference).

    Several adapters with distinct names can be injected into the same UNet, alongside ControlNets and
    LoRAs: their features add up. ``inject``/``eject`` follow the ``refiners_core`` adapter contract
    (all-or-nothing, exact restoration), so ``rc.inject_adapters([...])`` accepts T2I adapters too.
    """

    def __init__(
        self,
        unet: UNet,
        config: T2IConfig,
        name: str = "t2i",
        scale: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Build an adapter with freshly initialised weights (``device``/``dtype`` default to the UNet's).

        Raises:
            AdapterError: ``unet`` is not a refiners-sd UNet, ``name`` is empty, or the features do not fit it.
        """
        if not isinstance(unet, UNet):
            raise AdapterError(f"T2I-Adapters patch a refiners-sd UNet, got {type(unet).__name__}")
        if not isinstance(name, str) or not name:
            raise AdapterError(f"invalid T2I-Adapter name {name!r}: a non-empty string is needed")
        points = injection_points(config, unet.config)
        unet_device, unet_dtype = _device_dtype(unet)
        super().__init__(T2IEncoder(config, device=device or unet_device, dtype=dtype or unet_dtype))
        self.config = config
        self.name = name
        self.__dict__["_unet"] = unet  # not a submodule: the UNet is not part of the adapter's tree
        self.__dict__["_points"] = points
        injectors = [
            T2IFeatureAdapter(target_layer(unet, point), name, point.feature, float(scale), point.describe())
            for point in points
        ]
        self.__dict__["_injectors"] = injectors
        self.__dict__["_group"] = rc.AdapterGroup(name, injectors, scale=scale, set_member_scale=_set_feature_scale)
        self.__dict__["_features"] = None

    # ---- loading -----------------------------------------------------------------------------------

    @classmethod
    def from_diffusers(
        cls,
        unet: UNet,
        path: str | Path | Mapping[str, torch.Tensor],
        name: str = "t2i",
        scale: float = 1.0,
        *,
        adapter_type: str | None = None,
        num_res_blocks: int | None = None,
        allow_pickle: bool = False,
        variant: str | None = None,
    ) -> T2IAdapter:
        """Load a T2I-Adapter for ``unet`` (not injected yet), weights straight on the UNet's device and dtype.

        ``path``: a diffusers ``T2IAdapter`` folder, a single safetensors file with diffusers ``adapter.*`` keys
        or in the original TencentARC layout, or a state dict. Without a ``config.json`` the network is inferred
        from the tensor shapes; ``full_adapter`` and ``full_adapter_xl`` (same tensors) are told apart by which
        one fits ``unet``. ``adapter_type`` forces a type; ``num_res_blocks`` splits an original full-adapter
        file's resnets into levels (default: one level per UNet down block).

        Raises:
            WeightsError: unreadable source, unknown layout, missing/unexpected/misshapen keys (named).
            AdapterError: the adapter's features do not fit ``unet``.
        """
        if adapter_type is not None and adapter_type not in ADAPTER_TYPES:
            raise ValueError(f"adapter_type {adapter_type!r} is not one of {', '.join(ADAPTER_TYPES)}")
        device, dtype = _device_dtype(unet)
        state, config_dict, origin = read_weights(path, device, dtype, allow_pickle=allow_pickle, variant=variant)
        if detect_format(list(state), origin) == "tencentarc":
            state = tencentarc_to_diffusers(state, unet.config.num_blocks, num_res_blocks, origin)
        config = cls._resolve_config(unet, state, config_dict, adapter_type, origin)
        adapter = cls(unet, config, name=name, scale=scale, device="meta", dtype=dtype)
        load_diffusers_weights(adapter.encoder, state, origin)
        return adapter

    def diffusers_state_dict(self) -> dict[str, torch.Tensor]:
        """The network's weights under diffusers ``T2IAdapter`` names (``adapter.conv_in.weight``...)."""
        return state_dict_by_module_map(diffusers_module_map(self.encoder))

    def save_diffusers(self, path: str | Path) -> Path:
        """Write the adapter as a diffusers ``T2IAdapter`` folder (``config.json`` and
        ``diffusion_pytorch_model.safetensors``) and return the folder; :meth:`from_diffusers` reads it back."""
        return save_model_folder(
            path, self.config.to_dict(), self.diffusers_state_dict(), "diffusion_pytorch_model.safetensors"
        )

    @staticmethod
    def _resolve_config(
        unet: UNet,
        state: Mapping[str, torch.Tensor],
        config_dict: Mapping[str, Any] | None,
        adapter_type: str | None,
        origin: str,
    ) -> T2IConfig:
        if config_dict is not None:
            try:
                forced = {"adapter_type": adapter_type} if adapter_type else {}
                config = T2IConfig.from_dict({**config_dict, **forced})
            except ValueError as error:
                raise WeightsError(f"{origin}: {error}") from error
            return config
        guess = infer_config(state, origin, adapter_type=adapter_type)
        if adapter_type is not None or guess.is_light:
            return guess
        other = "full_adapter" if guess.adapter_type == "full_adapter_xl" else "full_adapter_xl"
        for candidate_type in (guess.adapter_type, other):
            try:
                candidate = infer_config(state, origin, adapter_type=candidate_type)
                injection_points(candidate, unet.config)
            except (AdapterError, WeightsError):  # does not fit, or not a valid config of that type
                continue
            return candidate
        return guess  # fits nothing: the constructor raises with the most likely type's mismatch

    # ---- structure ---------------------------------------------------------------------------------

    @property
    def encoder(self) -> T2IEncoder:
        """The adapter network (condition image -> features)."""
        return self.ensure_find(T2IEncoder)

    @property
    def unet(self) -> UNet:
        """The UNet this adapter patches."""
        return self.__dict__["_unet"]

    @property
    def injection_points(self) -> list[InjectionPoint]:
        """Which feature goes to which down block (``block=None``: the middle block)."""
        return list(self.__dict__["_points"])

    @property
    def feature_layers(self) -> list[T2IFeature]:
        """The ``T2IFeature`` layers this adapter injects, one per injection point."""
        return [injector.feature for injector in self.__dict__["_injectors"]]

    @property
    def is_injected(self) -> bool:
        """Whether the adapter's layers are in the UNet."""
        return bool(self.__dict__["_group"].is_injected)

    @property
    def scale(self) -> float:
        """Multiplier of every feature; settable at any time (0 gives the bare UNet's output exactly)."""
        return float(self.__dict__["_group"].scale)

    @scale.setter
    def scale(self, value: float) -> None:
        self.__dict__["_group"].scale = value

    # ---- condition ---------------------------------------------------------------------------------

    def set_image(self, image: ImageInput) -> None:
        """Use the condition ``image`` (PIL, or ``[B, C, H, W]`` in [0, 1]) from now on: the adapter-family contract's
        ``set_image``. A PIL image is converted to the adapter's channels (grayscale or RGB)."""
        self.set_condition(image)

    def set_condition(self, image: ImageInput) -> list[torch.Tensor]:
        """Compute the features of the condition ``image`` (PIL, or ``[B, C, H, W]`` in [0, 1]) and store them.

        ``C`` is ``config.in_channels`` (3 or 1); ``H`` and ``W`` are the latents' size times the VAE factor (8)
        and multiples of ``config.downscale_factor``. The image is moved to the network's device and dtype, the
        features to the UNet's. Returns the features.

        Raises:
            ValueError: wrong rank, channels, or size.
        """
        if isinstance(image, PILImage):
            image = rc.image_to_tensor(image, mode="L" if self.config.in_channels == 1 else "RGB")
        if not isinstance(image, torch.Tensor) or image.dim() != 4:
            shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"T2I-Adapter {self.name!r}: the condition must be a [B, C, H, W] tensor, got {shape}")
        factor = self.config.downscale_factor
        if image.shape[1] != self.config.in_channels or image.shape[2] % factor or image.shape[3] % factor:
            raise ValueError(
                f"T2I-Adapter {self.name!r} takes [B, {self.config.in_channels}, H, W] images with H and W multiples "
                f"of {factor}, got {list(image.shape)}"
            )
        encoder = self.encoder
        device, dtype = _device_dtype(self.unet)  # the network may live elsewhere: features go where the UNet is
        features = [
            feature.to(device=device, dtype=dtype)
            for feature in self(image.to(device=encoder.device, dtype=encoder.dtype))
        ]
        self.__dict__["_features"] = features
        if self.is_injected:
            self.unet.set_context(T2I_CONTEXT, {self.name: features})
        return features

    def clear_condition(self) -> None:
        """Forget the stored features (running the UNet with the adapter injected then raises)."""
        self.__dict__["_features"] = None
        self._drop_context()

    def _drop_context(self) -> None:
        try:
            self.unet.use_context(T2I_CONTEXT).pop(self.name, None)
        except KeyError:  # context never declared
            pass

    # ---- injection ---------------------------------------------------------------------------------

    def inject(self) -> T2IAdapter:
        """Add the feature layers to the UNet (all or nothing); returns the adapter.

        Raises:
            AdapterError: already injected, or another injected T2I-Adapter has the same name.
        """
        if self.is_injected:
            raise AdapterError(f"T2I-Adapter {self.name!r} is already injected")
        if self.name in injected_names(self.unet):
            raise AdapterError(
                f"another T2I-Adapter named {self.name!r} is injected in this UNet: eject it or pick another name"
            )
        self.__dict__["_group"].inject()
        if self.__dict__["_features"] is not None:
            self.unet.set_context(T2I_CONTEXT, {self.name: self.__dict__["_features"]})
        return self

    def eject(self) -> None:
        """Remove the feature layers: the UNet gets its exact original layers back. The condition is kept for a
        later :meth:`inject`, but dropped from the UNet's context."""
        if not self.is_injected:
            raise AdapterError(f"T2I-Adapter {self.name!r} is not injected")
        self.__dict__["_group"].remove()
        self._drop_context()

    def remove(self, module: nn.Module | None = None) -> Chain:
        """Without argument, eject the T2I-Adapter (the adapter-family contract's ``remove()``); with a child
        ``module``, remove that child as :meth:`Chain.remove` does. Returns ``self``."""
        if module is not None:
            return super().remove(module)
        self.eject()
        return self


def _set_feature_scale(injector: Any, value: float) -> None:
    injector.feature.scale = value
