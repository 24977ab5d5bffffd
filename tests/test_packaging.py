"""Every distribution of the repository is installable on its own, as ARCHITECTURE.md promises."""

from __future__ import annotations

from importlib import metadata
from importlib.resources import files

import pytest
from packaging.requirements import Requirement

FAMILY_DISTRIBUTIONS = {
    "refiners-sd": ("refiners_sd", "sd"),
    "refiners-lora": ("refiners_lora", "lora"),
    "refiners-controlnet": ("refiners_controlnet", "controlnet"),
    "refiners-t2i": ("refiners_t2i", "t2i"),
    "refiners-ip-adapter": ("refiners_ip_adapter", "ip_adapter"),
}


def requirement_names(distribution: str) -> set[str]:
    """Names of the unconditional requirements of an installed distribution."""
    requirements = [Requirement(text) for text in metadata.requires(distribution) or []]
    return {requirement.name for requirement in requirements if requirement.marker is None}


@pytest.mark.parametrize("distribution", sorted(FAMILY_DISTRIBUTIONS))
def test_a_plugin_alone_brings_the_core_and_the_registry(distribution: str) -> None:
    # `pip install refiners-lora` on its own must give a working `refiners adapters list/pull`
    assert {"refiners-core", "refiners-registry"} <= requirement_names(distribution)


@pytest.mark.parametrize("distribution", sorted(FAMILY_DISTRIBUTIONS))
def test_a_plugin_declares_its_entry_point_and_ships_py_typed(distribution: str) -> None:
    package, entry_name = FAMILY_DISTRIBUTIONS[distribution]
    entry_points = {
        ep.name: ep.value for ep in metadata.distribution(distribution).entry_points if ep.group == "refiners"
    }
    assert entry_points == {entry_name: f"{package}.plugin"}
    assert files(package).joinpath("py.typed").is_file()


def test_the_registry_and_the_core_ship_py_typed() -> None:
    assert files("refiners_core").joinpath("py.typed").is_file()
    assert files("refiners_registry").joinpath("py.typed").is_file()
    assert "refiners-core" in requirement_names("refiners-registry")
    assert not any(name.startswith("refiners-") for name in requirement_names("refiners-core"))
