#!/usr/bin/env bash
# The main job: install the project, then use the CLI and the library for real.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/refiners --help
.venv/bin/refiners plugins
.venv/bin/refiners adapters list --family controlnet   # the bundled catalog: no network, no torch
.venv/bin/python examples/quickstart.py

# Text to image, offline: tiny random assets built on the fly by each plugin's demo hook (refiners-sd's tiny
# SD1.5-topology pipeline folder, a kohya LoRA on the UNet and the text encoder, a diffusers ControlNet, a
# diffusers T2I-Adapter, an h94 IP-Adapter with its transformers CLIP image encoder, a condition image and a
# reference image), then one generate command stacking all four adapter families (--adapter FAMILY:SPEC or
# the --FAMILY shorthand). Everything lands in demo/ (git-ignored) so the image can be looked at.
demo="demo"
rm -rf "$demo"
.venv/bin/refiners demo-assets "$demo"
image="$(HF_HUB_OFFLINE=1 .venv/bin/refiners generate "a red cube" --base "$demo/base" \
    --lora "$demo/lora.safetensors:0.8" --controlnet "$demo/controlnet:$demo/condition.png:0.9" \
    --adapter "t2i:$demo/t2i:$demo/condition.png:0.7" \
    --ip-adapter "$demo/ip_adapter.safetensors:$demo/reference.png:0.6" --image-encoder "$demo/image_encoder" \
    --steps 4 --seed 0 -o "$demo/out.png" | tail -n 1)"
.venv/bin/python -c "import sys; from PIL import Image; im = Image.open(sys.argv[1]); print(sys.argv[1], im.format, im.size)" "$image"

# Training: a toy dataset of solid-colour squares ("a red square", ...), a tiny LoRA trained in seconds on the
# demo base (from Python, as in a notebook), then the same prompt without and with it, side by side.
.venv/bin/python examples/train_toy_lora.py "$demo/base" "$demo/train"
for with in no yes; do
    lora=(); [ "$with" = yes ] && lora=(--lora "$demo/train/toy_lora.safetensors")
    HF_HUB_OFFLINE=1 .venv/bin/refiners generate "a red square" --base "$demo/base" "${lora[@]}" --steps 4 --seed 0 \
        -o "$demo/train/$with.png" | tail -n 1
done
.venv/bin/python - "$demo/train/no.png" "$demo/train/yes.png" "$demo/train_side_by_side.png" <<'PY'
import sys
from PIL import Image, ImageChops
without, with_lora = Image.open(sys.argv[1]), Image.open(sys.argv[2])
side = Image.new("RGB", (without.width * 2 + 4, without.height), "white")
side.paste(without, (0, 0))
side.paste(with_lora, (without.width + 4, 0))
side.save(sys.argv[3])
changed = ImageChops.difference(without.convert("RGB"), with_lora.convert("RGB")).getbbox() is not None
print(sys.argv[3], "(without | with the trained LoRA; the LoRA changes the image:", changed, ")")
PY
