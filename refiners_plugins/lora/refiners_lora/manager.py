"""LoraManager: named LoRAs on a model — add, rescale, remove, fuse, unfuse, save."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import refiners_core as rc
from refiners_core.module import get_parent
from refiners_core.weights import format_keys
from refiners_lora.adapter import LoraAdapter
from refiners_lora.deltas.base import WeightDelta, check_finite, check_tensors
from refiners_lora.deltas.build import build_delta
from refiners_lora.errors import LoraError
from refiners_lora.formats import parse_lora, read_lora_file
from refiners_lora.formats.common import COMPONENTS, DeltaWeights, LoraWeights
from refiners_lora.layers import Lora
from refiners_lora.metadata import read_lora_metadata
from refiners_lora.module_map import ModuleMap, NameResolver, resolve_aliases, resolve_module_map
from refiners_lora.writers import write_deltas, write_lora, write_peft

Target = tuple[str, str]  # (component, module name)
_MANAGER_ATTRIBUTE = "_refiners_lora_manager"


def model_architecture(model: nn.Module) -> str | None:
    """The architecture name a model declares (``architecture``, or a UNet's ``topology``: ``sd15``, ``sdxl``)."""
    for attribute in ("architecture", "topology"):
        value = getattr(model, attribute, None)
        if isinstance(value, str) and value:
            return value
    return None


class LoraManager:
    """Loads named LoRAs into a model and manages them.

    Module names in LoRA files are matched against a name -> layer map built once, before any
    adapter is injected: by default diffusers names for a refiners-sd UNet, dotted layer paths for
    any other Chain; ``module_map`` overrides it. ``model`` is the ``unet`` component; text encoders
    and other components can be given in ``components`` (a module or a name -> layer map each).

    Several LoRAs stack on the same layers with independent scales; a file may mix algorithms
    (LoRA, LoCon, LoHa, LoKr, DoRA, full diff, (IA)^3, OFT, GLoRA). Every change is all-or-nothing:
    when :meth:`add` raises, the model is exactly as before. The manager attaches itself to the
    model (for :meth:`of`) only once a LoRA was added: a failed first load leaves nothing behind.
    """

    def __init__(
        self,
        model: nn.Module,
        module_map: ModuleMap | nn.Module | None = None,
        components: Mapping[str, ModuleMap | nn.Module] | None = None,
        architecture: str | None = None,
    ) -> None:
        existing = model.__dict__.get(_MANAGER_ATTRIBUTE)
        if existing is not None and existing.names:
            raise LoraError("this model already has a LoraManager holding LoRAs: use LoraManager.of(model)")
        self.model = model
        self.architecture = architecture or model_architecture(model)
        self._maps: dict[str, dict[str, nn.Module]] = {"unet": resolve_module_map(model, module_map)}
        for component, source in (components or {}).items():
            if component not in COMPONENTS:
                raise LoraError(f"unknown component {component!r}: expected one of {', '.join(COMPONENTS)}")
            self._maps[component] = resolve_module_map(source if isinstance(source, nn.Module) else model, source)
        self._resolvers: dict[str, NameResolver] = {}
        self._adapters: dict[Target, LoraAdapter] = {}
        self._loras: dict[str, dict[Target, WeightDelta]] = {}
        self._scales: dict[str, float] = {}

    @classmethod
    def of(cls, model: nn.Module, **options: Any) -> LoraManager:
        """The manager already attached to ``model``, or a new one built with ``options``."""
        existing = model.__dict__.get(_MANAGER_ATTRIBUTE)
        return existing if existing is not None else cls(model, **options)

    # ---- state -----------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Names of the loaded LoRAs, in loading order."""
        return list(self._loras)

    @property
    def scales(self) -> dict[str, float]:
        """User scale of each loaded LoRA."""
        return dict(self._scales)

    @property
    def fused_names(self) -> list[str]:
        """Names of the LoRAs currently fused into the base weights."""
        return [name for name, layers in self._loras.items() if any(lora.fused for lora in layers.values())]

    def layers_of(self, name: str) -> dict[Target, WeightDelta]:
        """The weight deltas (LoRA layers and the other algorithms) of ``name`` by ``(component, module name)``."""
        return dict(self._require(name))

    def algorithms_of(self, name: str) -> list[str]:
        """The algorithms ``name`` uses (``lora``, ``loha``, ``dora``...), sorted."""
        return sorted({delta.algorithm for delta in self._require(name).values()})

    def _require(self, name: str) -> dict[Target, WeightDelta]:
        if name not in self._loras:
            raise LoraError(f"no LoRA named {name!r} (loaded: {', '.join(self._loras) or 'none'})")
        return self._loras[name]

    def _resolver(self, component: str) -> NameResolver:
        if component not in self._resolvers:
            module_map = self._maps[component]
            aliases = resolve_aliases(self.model, module_map) if component == "unet" else {}
            self._resolvers[component] = NameResolver(list(module_map), aliases)
        return self._resolvers[component]

    # ---- adding ----------------------------------------------------------------------------------

    def add(
        self,
        name: str,
        weights: str | Path | Mapping[str, torch.Tensor],
        scale: float = 1.0,
        *,
        skip_components: Iterable[str] = (),
        format: str | None = None,
        metadata: Mapping[str, str] | None = None,
        allow_pickle: bool = False,
    ) -> LoraManager:
        """Load the LoRA ``weights`` (a file, a folder holding one, or a state dict) under ``name``.

        The format is detected from the keys (``format`` forces one); modules are matched by name.
        ``skip_components`` deliberately ignores whole components (e.g. ``("text_encoder",)``). A file
        whose header says it was trained for another architecture (kohya ``ss_base_model_version``,
        ``modelspec.architecture``) is refused before any key matching.

        Raises:
            LoraError: listing every offending key: keys of no known layout, incomplete down/up
                pairs, components the manager lacks, names matching no module, shapes that do not
                fit. Nothing is changed then.
        """
        if not name or "." in name:
            raise LoraError(f"invalid LoRA name {name!r}: it must be non-empty and contain no '.'")
        if name in self._loras:
            raise LoraError(f"a LoRA named {name!r} is already loaded: remove it first or pick another name")
        scale = check_finite(f"the scale of LoRA {name!r}", scale)
        if isinstance(weights, str | Path):
            state_dict, file_metadata = read_lora_file(weights, allow_pickle=allow_pickle)
            metadata = {**file_metadata, **(metadata or {})}
        else:
            state_dict = dict(weights)
        self._check_architecture(name, weights, metadata)
        parsed = parse_lora(state_dict, metadata, format=format)
        built = self._build(name, parsed.layers, parsed.invalid_keys, set(skip_components), parsed.format, scale)
        self._attach(name, built)
        self._scales[name] = float(scale)
        self.model.__dict__[_MANAGER_ATTRIBUTE] = self
        return self

    def _check_architecture(
        self, name: str, weights: str | Path | Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None
    ) -> None:
        trained_for = read_lora_metadata(metadata or {})
        if trained_for.base_model is None or self.architecture is None:
            return
        if trained_for.base_model != self.architecture:
            source = weights if isinstance(weights, str | Path) else f"LoRA {name!r}"
            raise LoraError(
                f"{source} was trained for {trained_for.base_model} ({trained_for.base_model_source}) but the "
                f"model is {self.architecture}: load it on a {trained_for.base_model} model"
            )

    def _build(
        self,
        name: str,
        entries: Sequence[LoraWeights | DeltaWeights],
        invalid_keys: list[str],
        skip: set[str],
        layout: str,
        scale: float,
    ) -> dict[Target, tuple[LoraAdapter, bool, WeightDelta]]:
        problems: list[str] = []
        if invalid_keys:
            problems.append(
                "keys of no known LoRA layout, without their down/up pair or mixing algorithms: "
                f"{format_keys(invalid_keys)}"
            )
        unknown_skips = skip - set(COMPONENTS)
        if unknown_skips:
            problems.append(f"unknown components to skip: {', '.join(sorted(unknown_skips))}")
        missing_component: list[str] = []
        unmatched: list[str] = []
        misfit: list[str] = []
        built: dict[Target, tuple[LoraAdapter, bool, WeightDelta]] = {}
        for entry in entries:
            if entry.component in skip:
                continue
            if entry.component not in self._maps:
                missing_component.extend(entry.keys)
                continue
            module = self._resolver(entry.component).resolve(entry.name, entry.underscored)
            if module is None:
                unmatched.extend(entry.keys)
                continue
            target_key = (entry.component, module)
            if target_key in built:
                misfit.append(f"{', '.join(entry.keys)} (a second LoRA for {module})")
                continue
            target = self._maps[entry.component][module]
            try:
                lora = build_delta(target, entry, scale)
            except LoraError as error:
                misfit.append(f"{', '.join(entry.keys)} ({error})")
                continue
            adapter = self._adapters.get(target_key)
            is_new = adapter is None
            if adapter is None:
                if get_parent(target) is None:
                    misfit.append(f"{', '.join(entry.keys)} ({module} is not inside a refiners Chain)")
                    continue
                adapter = LoraAdapter(target)
            if name in adapter._modules:
                misfit.append(f"{', '.join(entry.keys)} (name {name!r} is taken on {module})")
                continue
            built[target_key] = (adapter, is_new, lora)
        if missing_component:
            components = sorted({entry.component for entry in entries if entry.component not in self._maps})
            problems.append(
                f"keys for {', '.join(components)}, which this manager does not have (pass it in components=, "
                f"or skip_components={tuple(components)!r} to ignore it): {format_keys(missing_component)}"
            )
        if unmatched:
            problems.append(f"keys matching no module of the model: {format_keys(unmatched)}")
        if misfit:
            problems.append(f"keys that do not fit their module: {format_keys(misfit, limit=10)}")
        if not problems and not built:
            problems.append("no LoRA layer left to load")
        if problems:
            raise LoraError(f"cannot add LoRA {name!r} ({layout}): " + "; ".join(problems))
        return built

    def _attach(self, name: str, built: dict[Target, tuple[LoraAdapter, bool, WeightDelta]]) -> None:
        new_adapters = [adapter for adapter, is_new, _ in built.values() if is_new]
        rc.inject_adapters(new_adapters)
        attached: list[tuple[LoraAdapter, WeightDelta]] = []
        try:
            for adapter, _, lora in built.values():
                adapter.add_lora(name, lora)
                attached.append((adapter, lora))
        except BaseException:
            for adapter, lora in reversed(attached):
                adapter.remove(lora)
            rc.eject_adapters(reversed(new_adapters))
            raise
        for target_key, (adapter, _, _) in built.items():
            self._adapters[target_key] = adapter
        self._loras[name] = {target_key: lora for target_key, (_, _, lora) in built.items()}

    # ---- hot-swap (torch.compile) -------------------------------------------------------------

    def _parse(
        self, name: str, weights: str | Path | Mapping[str, torch.Tensor], allow_pickle: bool = False
    ) -> list[tuple[Target, LoraWeights]]:
        """Read ``weights`` and resolve every layer to a target; only plain LoRA / LoCon layers."""
        if isinstance(weights, str | Path):
            state_dict, metadata = read_lora_file(weights, allow_pickle=allow_pickle)
        else:
            state_dict, metadata = dict(weights), {}
            check_tensors(state_dict)  # a file is checked as it is read
        self._check_architecture(name, weights, metadata)
        parsed = parse_lora(state_dict, metadata)
        problems: list[str] = []
        if parsed.invalid_keys:
            problems.append(f"keys of no known LoRA layout: {format_keys(parsed.invalid_keys)}")
        resolved: list[tuple[Target, LoraWeights]] = []
        for entry in parsed.layers:
            if not isinstance(entry, LoraWeights):
                problems.append(f"{entry.algorithm} layers cannot be hot-swapped: {format_keys(list(entry.keys))}")
                continue
            module = (
                self._resolver(entry.component).resolve(entry.name, entry.underscored)
                if (entry.component in self._maps)
                else None
            )
            if module is None:
                problems.append(f"keys matching no module of the model: {format_keys(list(entry.keys))}")
                continue
            resolved.append(((entry.component, module), entry))
        if problems:
            raise LoraError(f"cannot hot-swap LoRA {name!r}: " + "; ".join(problems))
        return resolved

    def add_hotswappable(
        self,
        name: str,
        weights: str | Path | Mapping[str, torch.Tensor],
        *,
        max_rank: int,
        targets: Iterable[str | Target] = (),
        scale: float = 1.0,
        allow_pickle: bool = False,
    ) -> LoraManager:
        """Load a plain LoRA / LoCon as ``name`` so that :meth:`hotswap` can later replace it by another
        file without changing any shape, module or Python attribute: a ``torch.compile``-d model does
        not recompile.

        Every layer gets rank ``max_rank`` (zero-padded); ``targets`` (module names of the UNet, or
        ``(component, module)`` pairs) adds zero LoRAs on layers later files may target. Hot-swappable
        LoRAs are never fused and take their scale from a tensor buffer.
        """
        from refiners_lora.hotswap import PaddedLora

        if name in self._loras:
            raise LoraError(f"a LoRA named {name!r} is already loaded: remove it first or pick another name")
        scale = check_finite(f"the scale of LoRA {name!r}", scale)
        resolved = dict(self._parse(name, weights, allow_pickle))
        wanted = [target if isinstance(target, tuple) else ("unet", target) for target in targets]
        problems = [
            f"{component}:{module}" for component, module in wanted if module not in self._maps.get(component, {})
        ]
        if problems:
            raise LoraError(f"hot-swap targets matching no module of the model: {', '.join(problems)}")
        built: dict[Target, tuple[LoraAdapter, bool, WeightDelta]] = {}
        misfit: list[str] = []
        for target_key in [*resolved, *(key for key in wanted if key not in resolved)]:
            target = self._maps[target_key[0]][target_key[1]]
            padded = PaddedLora.empty(target, max_rank, scale)
            entry = resolved.get(target_key)
            if entry is not None:
                try:
                    padded.check(entry.down, entry.up)
                except LoraError as error:
                    misfit.append(f"{', '.join(entry.keys)} ({error})")
                    continue
                padded.load(entry.down, entry.up, entry.alpha)
            adapter = self._adapters.get(target_key)
            built[target_key] = (adapter or LoraAdapter(target), adapter is None, padded)
        if misfit:
            raise LoraError(f"cannot add LoRA {name!r}: keys that do not fit: {format_keys(misfit, limit=10)}")
        self._attach(name, built)
        self._scales[name] = scale
        self.model.__dict__[_MANAGER_ATTRIBUTE] = self
        return self

    def hotswap(
        self, name: str, weights: str | Path | Mapping[str, torch.Tensor], *, allow_pickle: bool = False
    ) -> None:
        """Replace the LoRA loaded by :meth:`add_hotswappable` as ``name`` by ``weights``, in place.

        Raises:
            LoraError: a layer outside the targets fixed up front, a rank above ``max_rank``, a layer
                that is not a plain LoRA: nothing is changed then.
        """
        from refiners_lora.hotswap import PaddedLora

        slots = self._require(name)
        if not all(isinstance(delta, PaddedLora) for delta in slots.values()):
            raise LoraError(f"LoRA {name!r} was not loaded with add_hotswappable")
        resolved = dict(self._parse(name, weights, allow_pickle))
        problems: list[str] = []
        for target_key, entry in resolved.items():
            slot = slots.get(target_key)
            if slot is None:
                problems.append(f"{', '.join(entry.keys)} (not a hot-swap target: pass it in targets= up front)")
                continue
            try:
                slot.check(entry.down, entry.up)  # type: ignore[operator]
            except LoraError as error:
                problems.append(f"{', '.join(entry.keys)} ({error})")
        if problems:
            raise LoraError(f"cannot hot-swap LoRA {name!r}: {format_keys(problems, limit=10)}")
        for target_key, slot in slots.items():
            assert isinstance(slot, PaddedLora)
            new = resolved.get(target_key)
            if new is None:
                slot.load(None, None, None)
            else:
                slot.load(new.down, new.up, new.alpha)

    # ---- changing --------------------------------------------------------------------------------

    def set_scale(self, name: str, scale: float) -> None:
        """Change the scale of ``name``; a fused LoRA's base weights are updated by the difference."""
        layers = self._require(name)
        scale = check_finite(f"the scale of LoRA {name!r}", scale)
        for delta in layers.values():
            delta.rescale(scale)
        self._scales[name] = scale

    def remove(self, name: str) -> None:
        """Remove ``name`` (unfusing it first if fused); a layer left with no LoRA gets its original back."""
        layers = self._require(name)
        self._unfuse_layers(layers)
        for target_key in layers:
            adapter = self._adapters[target_key]
            adapter.remove_lora(name)
            if not adapter.loras:
                adapter.eject()
                del self._adapters[target_key]
        del self._loras[name]
        del self._scales[name]
        if not self._loras and self.model.__dict__.get(_MANAGER_ATTRIBUTE) is self:
            del self.model.__dict__[_MANAGER_ATTRIBUTE]

    def remove_all(self) -> None:
        """Remove every LoRA: the model gets back its exact original layers."""
        for name in reversed(self.names):
            self.remove(name)

    # ---- fusing ----------------------------------------------------------------------------------

    def fuse(self, names: Iterable[str] | None = None) -> None:
        """Merge LoRAs (default: all) into the base weights, in place: zero overhead at inference.

        Fused LoRAs stay listed; :meth:`set_scale` and :meth:`remove` keep working on them.
        """
        selected = list(self._loras) if names is None else list(names)
        for name in selected:
            self._require(name)
        for name in selected:
            for delta in self._loras[name].values():
                delta.fuse()

    def _unfuse_layers(self, layers: Mapping[Target, WeightDelta]) -> None:
        for delta in layers.values():
            delta.unfuse()

    def unfuse(self, names: Iterable[str] | None = None) -> None:
        """Take fused LoRAs (default: all) back out of the base weights (exact up to float rounding)."""
        selected = list(self._loras) if names is None else list(names)
        for name in selected:
            self._unfuse_layers(self._require(name))

    # ---- saving ----------------------------------------------------------------------------------

    def state_dict_of(self, name: str) -> dict[Target, tuple[torch.Tensor, torch.Tensor, float]]:
        """``(down, up, alpha)`` of every layer of ``name`` by ``(component, module name)``.

        Raises:
            LoraError: when ``name`` holds layers other than plain down/up LoRAs (see :meth:`save`).
        """
        state: dict[Target, tuple[torch.Tensor, torch.Tensor, float]] = {}
        for target_key, lora in self._require(name).items():
            if not isinstance(lora, Lora) or lora.mid is not None:
                raise LoraError(f"LoRA {name!r} holds {lora.algorithm} layers: only plain LoRAs have down/up pairs")
            down, up = lora._weights()
            state[target_key] = (down.detach(), up.detach(), lora.alpha)
        return state

    def save(self, name: str, path: str | Path, format: str = "diffusers") -> Path:
        """Write ``name`` to a safetensors file in ``format`` (``diffusers``, ``kohya`` or ``refiners``).

        Ranks and alphas are kept (diffusers files carry them in ``lora_adapter_metadata``); the user
        scale is not part of the file. Whatever ``format`` says, a LoRA holding other algorithms is
        written in kohya / LyCORIS layout with each algorithm's own key names (LoHa, LoKr, DoRA...), or in
        PEFT layout (diffusers keys, a PEFT config per component) when it holds an adapter only PEFT
        describes (PEFT OFT, BOFT, DoRA or LoKr as read from a PEFT file). Either reads back the same.

        Raises:
            LoraError: a LoRA mixing PEFT-only layers with layers PEFT cannot describe, or PEFT layers
                whose config fields differ (one PEFT config per component).
        """
        layers = self._require(name)
        if all(isinstance(delta, Lora) and delta.mid is None for delta in layers.values()):
            return write_lora(self.state_dict_of(name), path, format)
        if not any(delta.peft_only for delta in layers.values()):
            return write_deltas({target: delta.state() for target, delta in layers.items()}, path)
        peft = {target: delta.peft_state() for target, delta in layers.items()}
        missing = sorted(f"{component}.{module} ({layers[component, module].algorithm})"
                         for (component, module), state in peft.items() if state is None)  # fmt: skip
        if missing:
            raise LoraError(
                f"cannot save LoRA {name!r}: it holds PEFT-only layers and layers PEFT cannot describe: "
                + ", ".join(missing)
            )
        return write_peft({target: state for target, state in peft.items() if state is not None}, path)
