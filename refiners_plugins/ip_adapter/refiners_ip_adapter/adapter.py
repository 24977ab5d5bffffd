"""IPAdapter: image prompts for a refiners-sd UNet (h94 IP-Adapter and IP-Adapter Plus)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from refiners_sd.unet.mapping import attention_processor_names, diffusers_module_map
from refiners_sd.unet.model import UNet
from torch import nn

import refiners_core as rc
from refiners_core import AdapterError, WeightsError
from refiners_core.module_map import load_by_module_map, state_dict_by_module_map
from refiners_core.weights import cast_state_dict
from refiners_ip_adapter.attention import IP_ADAPTER_CONTEXT, DecoupledCrossAttention, ImageCrossAttention
from refiners_ip_adapter.formats import (
    IPAdapterWeights,
    Variant,
    build_projection,
    flatten_nested,
    parse_h94,
    projection_module_map,
    read_h94,
)
from refiners_ip_adapter.image_encoder.model import CLIPImageEncoder
from refiners_ip_adapter.image_encoder.preprocessing import ImageInput
from refiners_ip_adapter.projection import FullImageProjection, ImageProjection, PerceiverResampler

__all__ = ["BlockScales", "IPAdapter"]

Projection = ImageProjection | PerceiverResampler | FullImageProjection
BlockScales = float | Mapping[str, Any]
_NAME = re.compile(r"^(down_blocks|up_blocks|mid_block)\.(?:(\d+)\.)?attentions\.(\d+)\.")
_GROUPS = {"down_blocks": "down", "up_blocks": "up", "mid_block": "mid"}


def _cross_attention_names(unet: UNet) -> list[str]:
    """``...attn2`` names in diffusers' processor order: the ``i``-th one is h94's ``ip_adapter.{2i+1}``."""
    return [name for name in attention_processor_names(unet) if name.endswith(".attn2")]


class IPAdapterModules(nn.ModuleList):
    """The image projection and every image branch of an :class:`IPAdapter` in one module, so that its weights
    load and save through one h94 module map (the layers keep their places in the adapter)."""

    def __init__(self, adapter: IPAdapter) -> None:
        super().__init__([adapter.image_proj, *adapter.image_attentions])
        self.adapter = adapter

    def h94_module_map(self) -> dict[str, nn.Module]:
        """h94 module names -> our layers: ``image_proj.*``, then ``ip_adapter.{2i+1}.to_k_ip/to_v_ip`` for the
        ``i``-th cross-attention in diffusers' processor order."""
        mapping = projection_module_map(self.adapter.image_proj)
        for index, branch in enumerate(self.adapter.image_attentions):
            mapping[f"ip_adapter.{2 * index + 1}.to_k_ip"] = branch.to_k_ip
            mapping[f"ip_adapter.{2 * index + 1}.to_v_ip"] = branch.to_v_ip
        return mapping


class IPAdapter:
    """An IP-Adapter on a refiners-sd UNet: one :class:`DecoupledCrossAttention` per text cross-attention,
    plus the image projection that turns CLIP image features into image tokens.

    Usage::

        ip = IPAdapter.from_file(unet, "ip-adapter-plus_sd15.safetensors", scale=0.7).inject()
        ip.image_encoder = CLIPImageEncoder.from_transformers("models/image_encoder")
        ip.set_image_embedding(ip.compute_image_embedding(image, classifier_free_guidance=True))
        ...  # run the UNet as usual (batch = 2: negative, positive)
        ip.eject()  # the UNet is exactly as before

    Variants (detected from the file's keys): ``base`` reads CLIP ``image_embeds`` ``[B, D]`` (or
    ``[B, n_images, D]``) and makes 4 tokens per image; ``plus`` (Resampler) reads the encoder's
    penultimate hidden states ``[B, N, H]`` (or ``[B, n_images, N, H]``) and makes 16; ``full`` reads
    hidden states and makes one token per state. Several images' tokens are concatenated.

    Nothing changes in the UNet until :meth:`inject`. Several IP-Adapters can sit on the same UNet
    under different ``name``\\ s; they, LoRAs, ControlNets and T2I-Adapters eject in any order.
    """

    def __init__(
        self,
        unet: UNet,
        image_proj: Projection,
        *,
        scale: float = 1.0,
        name: str = "ip_adapter",
        image_encoder: CLIPImageEncoder | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Build a (randomly initialised) IP-Adapter for ``unet`` around ``image_proj``; see :meth:`from_file`
        to load published weights. ``device``/``dtype`` default to the UNet's."""
        if not isinstance(unet, UNet):
            raise AdapterError(f"IP-Adapters patch refiners-sd UNets, not {type(unet).__name__}")
        if not name or "." in name:
            raise AdapterError(f"invalid IP-Adapter name {name!r}: it must be non-empty and contain no '.'")
        device = device if device is not None else unet.device
        dtype = dtype if dtype is not None else unet.dtype
        token_dim = image_proj.layer("LayerNorm", rc.LayerNorm).normalized_shape[0]  # the last norm (norm_out)
        modules = diffusers_module_map(unet, leaves_only=False)
        self.unet = unet
        self.image_proj = image_proj
        self.name = name
        self.image_encoder = image_encoder
        self.layer_names: list[str] = _cross_attention_names(unet)
        self.adapters: list[DecoupledCrossAttention] = []
        for layer_name in self.layer_names:
            cross_attention = modules[layer_name]
            to_q, to_k = modules[f"{layer_name}.to_q"], modules[f"{layer_name}.to_k"]
            # the map unwraps adapters: ``attn2`` is the UNet's CrossAttention, its projections are Linear
            assert isinstance(cross_attention, rc.Attention)
            assert isinstance(to_q, nn.Linear) and isinstance(to_k, nn.Linear)
            text_dim = to_k.in_features
            if text_dim != token_dim:
                raise AdapterError(
                    f"the image projection makes {token_dim}-wide tokens but {layer_name} reads {text_dim}-wide "
                    "text tokens: this IP-Adapter was made for another base model"
                )
            image = ImageCrossAttention(
                name,
                token_dim,
                to_q.out_features,
                cross_attention.num_heads,
                scale=scale,
                device=device,
                dtype=dtype,
            )
            self.adapters.append(DecoupledCrossAttention(cross_attention["ScaledDotProductAttention"], image))
        self.group = rc.AdapterGroup(name, self.adapters, scale=scale, set_member_scale=_set_branch_scale)
        self._scale = float(scale)

    # ---- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_file(
        cls,
        unet: UNet,
        weights: str | Path | Mapping[str, Any],
        scale: float = 1.0,
        *,
        name: str = "ip_adapter",
        image_encoder: CLIPImageEncoder | None = None,
        allow_pickle: bool = False,
    ) -> IPAdapter:
        """Read an h94 IP-Adapter (a safetensors path or a state dict, flat or nested) for ``unet``.

        The variant is detected from the keys; weights go straight to the UNet's device and dtype. The
        adapter is not injected yet: call :meth:`inject`.

        Raises:
            WeightsError: naming the keys at fault: unknown keys, missing keys, shapes that do not fit
                the UNet (e.g. an SDXL file on an SD1.5 UNet), or a count of ``ip_adapter.*`` layers
                that does not match the UNet's cross-attentions.
        """
        device, dtype = unet.device, unet.dtype
        if isinstance(weights, str | Path):
            source = str(weights)
            state_dict = read_h94(weights, device=device, dtype=dtype, allow_pickle=allow_pickle)
        else:
            source = "state dict"
            state_dict = {
                key: value.to(device=device, dtype=dtype) if isinstance(value, torch.Tensor) else value
                for key, value in flatten_nested(weights).items()
            }
        return cls.from_weights(unet, parse_h94(state_dict, source), scale, name=name, image_encoder=image_encoder)

    @classmethod
    def from_weights(
        cls,
        unet: UNet,
        weights: IPAdapterWeights,
        scale: float = 1.0,
        *,
        name: str = "ip_adapter",
        image_encoder: CLIPImageEncoder | None = None,
    ) -> IPAdapter:
        """Build the adapter from parsed h94 weights (see :func:`~refiners_ip_adapter.formats.parse_h94`)."""
        text_dim = unet.config.cross_attention_dim[0]
        if weights.cross_attention_dim != text_dim:
            raise WeightsError(
                f"{weights.source} makes {weights.cross_attention_dim}-wide image tokens but the UNet's "
                f"cross-attentions read {text_dim}-wide text tokens: this IP-Adapter was made for another base model"
            )
        projection = build_projection(weights, device="meta", dtype=unet.dtype)
        adapter = cls(unet, projection, scale=scale, name=name, image_encoder=image_encoder, device="meta")
        expected = [2 * index + 1 for index in range(len(adapter.layer_names))]
        if sorted(weights.attention) != expected:
            raise WeightsError(
                f"{weights.source} has ip_adapter layers {_ranges(sorted(weights.attention))} but the UNet's "
                f"{len(expected)} cross-attentions need {_ranges(expected)}: this IP-Adapter was made for "
                "another base model"
            )
        state = dict(weights.image_proj)
        for number, (to_k, to_v) in weights.attention.items():
            state[f"ip_adapter.{number}.to_k_ip.weight"] = to_k
            state[f"ip_adapter.{number}.to_v_ip.weight"] = to_v
        modules = IPAdapterModules(adapter)
        load_by_module_map(
            modules, modules.h94_module_map(), cast_state_dict(state, unet.device, unet.dtype), source=weights.source
        )
        projection.eval()
        return adapter

    # ---- structure -------------------------------------------------------------------------------

    @property
    def variant(self) -> Variant:
        """``"base"`` (reads ``image_embeds``), ``"plus"`` or ``"full"`` (read penultimate hidden states)."""
        if isinstance(self.image_proj, PerceiverResampler):
            return "plus"
        if isinstance(self.image_proj, FullImageProjection):
            return "full"
        return "base"

    @property
    def num_tokens(self) -> int:
        """Image tokens per image."""
        return self.image_proj.num_tokens

    @property
    def image_attentions(self) -> list[ImageCrossAttention]:
        """The image branch of every cross-attention, in diffusers' processor order."""
        return [adapter.image_attention for adapter in self.adapters]

    @property
    def is_injected(self) -> bool:
        """Whether the adapter currently sits in the UNet."""
        return self.group.is_injected

    def inject(self) -> IPAdapter:
        """Put every :class:`DecoupledCrossAttention` in place, all or nothing; returns ``self``."""
        if self.is_injected:
            raise AdapterError(f"IP-Adapter {self.name!r} is already injected")
        taken = {
            branch.ensure_find(rc.UseContext).key
            for branch in self.unet.layers(ImageCrossAttention)
            if branch not in self.image_attentions
        }
        if self.name in taken:
            raise AdapterError(f"another IP-Adapter named {self.name!r} is injected: give this one another name")
        self.group.inject()
        return self

    def eject(self) -> None:
        """Take the adapter out: the UNet gets its exact original layers back (other adapters stay)."""
        if not self.is_injected:
            raise AdapterError(f"IP-Adapter {self.name!r} is not injected")
        self.group.remove()

    def remove(self) -> None:
        """Eject the adapter (the adapter-family contract's ``remove``)."""
        self.eject()

    def parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the image projection and of every image branch."""
        yield from self.image_proj.parameters()
        for branch in self.image_attentions:
            yield from branch.parameters()

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> IPAdapter:
        """Move the image projection and the image branches (``unet.to`` moves the injected branches too)."""
        self.image_proj.to(device=device, dtype=dtype)
        for branch in self.image_attentions:
            branch.to(device=device, dtype=dtype)
        return self

    def h94_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights in the h94 layout (``image_proj.*``, ``ip_adapter.{k}.to_k_ip/to_v_ip.weight``)."""
        return state_dict_by_module_map(IPAdapterModules(self).h94_module_map())

    # ---- scales ----------------------------------------------------------------------------------

    @property
    def scale(self) -> float:
        """The global scale last set (per-layer values: :attr:`scales`)."""
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        self.set_scale(value)

    @property
    def scales(self) -> dict[str, float]:
        """The scale of every cross-attention by diffusers name (``down_blocks.1.attentions.0...attn2``)."""
        return {name: branch.scale for name, branch in zip(self.layer_names, self.image_attentions, strict=True)}

    def set_scale(self, scale: BlockScales) -> None:
        """Set the image prompt's weight: a number for every layer, or per block as diffusers'
        ``set_ip_adapter_scale`` reads it::

            ip.set_scale({"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}})

        Keys ``down``/``up`` take a number, or ``{"block_<i>": number or one number per attention of
        that block}``; ``mid`` takes a number. Layers not named get 0 (as in diffusers).

        Raises:
            ValueError: unknown keys, blocks without attention, lists of the wrong length.
        """
        if isinstance(scale, int | float):
            self.group.scale = float(scale)
            self._scale = float(scale)
            return
        values = _expand_scales(self.layer_names, scale)
        for branch, value in zip(self.image_attentions, values, strict=True):
            branch.scale = value

    # ---- image inputs ----------------------------------------------------------------------------

    def set_image_embedding(self, embedding: torch.Tensor) -> None:
        """Project image features into image tokens and store them in the UNet's ``ip_adapter`` context.

        ``embedding``: for ``base``, CLIP ``image_embeds`` ``[B, D]`` or ``[B, n_images, D]``; for
        ``plus``/``full``, penultimate hidden states ``[B, N, H]`` or ``[B, n_images, N, H]``. ``B`` must
        be the UNet's batch (e.g. negative and positive stacked for classifier-free guidance).
        """
        item_dims = 2 if self.variant != "base" else 1
        if embedding.dim() == item_dims + 1:
            embedding = embedding.unsqueeze(1)
        if embedding.dim() != item_dims + 2:
            expected = "[B, N, H] or [B, n_images, N, H]" if item_dims == 2 else "[B, D] or [B, n_images, D]"
            raise ValueError(
                f"{self.variant} IP-Adapter expects image features {expected}, got {tuple(embedding.shape)}"
            )
        width = self.image_proj.ensure_find(rc.Linear).in_features
        if embedding.shape[-1] != width:
            kind = "image_embeds" if item_dims == 1 else "penultimate hidden states"
            raise ValueError(
                f"this IP-Adapter reads {width}-wide {kind}, got {embedding.shape[-1]}-wide features "
                f"{tuple(embedding.shape)} (wrong image encoder?)"
            )
        batch, images = embedding.shape[:2]
        features = embedding.reshape(batch * images, *embedding.shape[2:])
        features = features.to(device=self.image_proj.device, dtype=self.image_proj.dtype)
        tokens = self.image_proj(features)
        tokens = tokens.reshape(batch, images * tokens.shape[1], tokens.shape[2])
        self.unet.set_context(
            IP_ADAPTER_CONTEXT, {self.name: tokens.to(device=self.unet.device, dtype=self.unet.dtype)}
        )

    def set_image(self, image: ImageInput | Sequence[ImageInput]) -> None:
        """Use the reference ``image`` (PIL, or ``[B, 3, H, W]`` in [0, 1]) from now on: the
        adapter-family contract's ``set_image``.

        Encodes it with :attr:`image_encoder` together with the negative embedding, so that generation with or
        without classifier-free guidance picks the half it needs (see :class:`ImageTokens`).
        """
        self.set_image_embedding(self.compute_image_embedding(image, classifier_free_guidance=True))

    def compute_image_embedding(
        self, images: ImageInput | Sequence[ImageInput], *, classifier_free_guidance: bool = False
    ) -> torch.Tensor:
        """Encode images with :attr:`image_encoder` into what :meth:`set_image_embedding` takes.

        One embedding per image (PIL images, or ``[0, 1]`` tensors ``[3, H, W]`` / ``[B, 3, H, W]``).
        With ``classifier_free_guidance`` the negative embeddings come first: zeros for ``base``, the
        encoding of an all-zero pixel tensor for ``plus``/``full``.
        """
        encoder = self.image_encoder
        if encoder is None:
            raise AdapterError(
                "this IP-Adapter has no image_encoder: set ip.image_encoder = "
                "CLIPImageEncoder.from_transformers(path), or pass embeddings to set_image_embedding"
            )
        pixels = encoder.preprocess(images)
        with torch.no_grad():
            output = encoder.encode(pixels)
            if self.variant == "base":
                embedding = output.image_embeds
            else:
                embedding = output.penultimate_hidden_state
            if not classifier_free_guidance:
                return embedding
            if self.variant == "base":
                negative = torch.zeros_like(embedding)
            else:
                negative = encoder.encode(torch.zeros_like(pixels)).penultimate_hidden_state
        return torch.cat([negative, embedding])

    def __repr__(self) -> str:
        state = "injected" if self.is_injected else "not injected"
        return (
            f"IPAdapter(name={self.name!r}, variant={self.variant!r}, tokens={self.num_tokens}, "
            f"layers={len(self.adapters)}, scale={self.scale}, {state})"
        )


def _ranges(numbers: list[int]) -> str:
    if not numbers:
        return "none"
    if numbers == list(range(numbers[0], numbers[-1] + 1, 2)):
        return f"{numbers[0]}, {numbers[0] + 2}, ... {numbers[-1]} ({len(numbers)})"
    return ", ".join(map(str, numbers[:8])) + (", ..." if len(numbers) > 8 else "") + f" ({len(numbers)})"


def _expand_scales(layer_names: list[str], scale: BlockScales) -> list[float]:
    """One scale per layer name from a number or a diffusers-style per-block mapping."""
    if isinstance(scale, int | float):
        return [float(scale)] * len(layer_names)
    if not isinstance(scale, Mapping):
        raise TypeError(f"scale must be a number or a per-block mapping, got {type(scale).__name__}")
    unknown = sorted(set(scale) - {"down", "mid", "up"})
    if unknown:
        raise ValueError(f"unknown scale keys {unknown}: expected 'down', 'mid' and/or 'up'")
    parsed = []
    for name in layer_names:
        match = _NAME.match(name)
        assert match is not None, name
        parsed.append((_GROUPS[match.group(1)], match.group(2), int(match.group(3))))
    attentions: dict[tuple[str, str | None], int] = {}
    for group, block, index in parsed:
        attentions[(group, block)] = max(attentions.get((group, block), 0), index + 1)
    for group in ("down", "up"):
        spec = scale.get(group)
        if isinstance(spec, Mapping):
            valid = [f"block_{block}" for (g, block) in attentions if g == group]
            bad = sorted(set(spec) - set(valid))
            if bad:
                raise ValueError(f"scale[{group!r}] names {bad}, blocks without attention: valid are {valid}")
            for key, value in spec.items():
                count = attentions[(group, key.removeprefix("block_"))]
                if isinstance(value, list | tuple) and len(value) not in (1, count):
                    raise ValueError(f"scale[{group!r}][{key!r}] has {len(value)} values for {count} attentions")
    mid = scale.get("mid", 0.0)
    if isinstance(mid, list | tuple):
        if len(mid) != 1:
            raise ValueError(f"scale['mid'] takes one value, got {len(mid)}")
        mid = mid[0]
    values: list[float] = []
    for group, block, index in parsed:
        if group == "mid":
            values.append(float(mid))
            continue
        spec = scale.get(group, 0.0)
        value = spec.get(f"block_{block}", 0.0) if isinstance(spec, Mapping) else spec
        if isinstance(value, list | tuple):
            value = value[0] if len(value) == 1 else value[index]
        values.append(float(value))
    return values


def _set_branch_scale(adapter: Any, value: float) -> None:
    adapter.image_attention.scale = value
