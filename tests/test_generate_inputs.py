"""``refiners generate``, ``demo-assets``, ``train`` and ``lora inspect`` with bad input: one ``Error:`` line, the
right exit code, nothing loaded and no file touched. A toy base-model plugin (a real distribution built by the
test) records what it loads, so each case shows the options are checked before any model is built.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from test_cli_bad_inputs import _run

PLUGIN = """
from refiners_core import BaseModelFamily, hookimpl


@hookimpl
def refiners_base_models():
    return [BaseModelFamily(name="toy", description="d", loader="toy_impl:build", detect="toy_impl:is_toy")]
"""

IMPL = """
from PIL import Image

LOADED = []


class Toy:
    architecture = "toy"
    default_size = 8
    size_multiple = 8

    def components(self):
        return {}

    def generate(self, prompt, **options):
        return Image.new("RGB", (options["width"], options["height"]), (200, 10, 10))


def build(path, *, device=None, dtype=None, **options):
    LOADED.append(path)
    return Toy()


def is_toy(path):
    return path.suffix == ".toy"
"""

BASE = "{tmp}/base.toy"
EXISTING = "{tmp}/existing.png"
# (arguments, exit code); "{tmp}" is a temporary folder holding base.toy, a-file and existing.png
CASES: list[tuple[list[str], int]] = [
    (["generate", "x"], 2),  # --base missing
    (["generate", "x", "--base", "{tmp}/absent"], 1),
    (["generate", "x", "--base", BASE, "--device", "foo"], 1),
    (["generate", "x", "--base", BASE, "--width", "-64"], 1),
    (["generate", "x", "--base", BASE, "--width", "0"], 1),
    (["generate", "x", "--base", BASE, "--height", "0"], 1),
    (["generate", "x", "--base", BASE, "--width", "abc"], 2),
    (["generate", "x", "--base", BASE, "--steps", "0"], 2),
    (["generate", "x", "--base", BASE, "--guidance", "nan"], 1),
    (["generate", "x", "--base", BASE, "--dtype", "float64"], 1),
    (["generate", "x", "--base", BASE, "-o", "{tmp}/out.jpg"], 1),
    (["generate", "x", "--base", BASE, "-o", "{tmp}/a-file/out.png"], 1),
    (["generate", "x", "--base", BASE, "-o", "{tmp}"], 1),
    (["generate", "x", "--base", BASE, "--adapter", "nofamily:x"], 4),
    (["generate", "x", "--base", BASE, "--nofamily", "x"], 4),
    (["generate", "x", "--base", BASE, "--adapter", "broken"], 1),
    (["generate", "--base", BASE], 1),  # no prompt
    (["generate", "x", "y", "--base", BASE], 1),
    (["demo-assets"], 2),
    (["demo-assets", "{tmp}/a-file"], 1),
    (["train", "lora"], 2),
    (["train", "lora", "--base", BASE, "--data", "{tmp}/absent", "-o", "{tmp}/o.safetensors"], 1),
    (["lora", "inspect", "{tmp}/absent.safetensors"], 1),
    (["lora", "inspect", "{tmp}/a-file"], 1),
]


@pytest.fixture
def toy(make_plugin_dist, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.delenv("REFINERS_LOAD_PLUGINS", raising=False)
    make_plugin_dist("refiners-toy", PLUGIN, extra_modules={"toy_impl": IMPL})
    import toy_impl  # type: ignore[import-not-found]

    from refiners_core.plugins import manager

    monkeypatch.setattr(manager, "_import_timeout", manager._import_timeout)  # main() bounds imports afterwards
    toy_impl.LOADED.clear()
    (tmp_path / "base.toy").write_text("")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "existing.png").write_bytes(b"old picture")
    monkeypatch.chdir(tmp_path)
    return toy_impl


@pytest.mark.parametrize(("args", "code"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_error_line_before_anything_loads(
    toy, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int
) -> None:  # type: ignore[no-untyped-def]
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    got, out, err = _run(argv, capsys)
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert got == code, (argv, out, err)
    assert len(errors) == 1, (argv, err)
    assert "Traceback" not in err + out and "╭" not in err + out
    assert toy.LOADED == []  # checked before the base model loads
    assert (tmp_path / "a-file").read_text() == "x" and (tmp_path / "existing.png").read_bytes() == b"old picture"


def test_toy_base_generates_and_zero_is_never_the_default_size(
    toy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    got, out, err = _run(["generate", "x", "--base", "base.toy", "--width", "16", "-o", "made.png"], capsys)
    assert got == 0, err
    assert out.splitlines()[-1] == "made.png" and toy.LOADED == [Path("base.toy")]
    with Image.open(tmp_path / "made.png") as image:
        assert image.size == (16, 8)


def test_a_failed_write_leaves_an_existing_png_whole(
    toy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    def disk_full(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"\x89PNG half")  # type: ignore[attr-defined]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    got, _, err = _run(["generate", "x", "--base", "base.toy", "-o", "existing.png"], capsys)
    assert got != 0 and len([line for line in err.splitlines() if line.startswith("Error: ")]) == 1, err
    assert "Traceback" not in err
    assert (tmp_path / "existing.png").read_bytes() == b"old picture"
    assert not list(tmp_path.glob(".existing.png.*"))  # no temporary file left behind
