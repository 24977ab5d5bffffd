"""CLIP text encoders (SD 1.5, SDXL) built from Chains, their tokenizer, and the transformer layers a CLIP
vision tower reuses (:mod:`refiners_sd.clip.transformer`)."""

from refiners_sd.clip.config import CLIP_TEXT_G, CLIP_TEXT_L, CLIPTextConfig
from refiners_sd.clip.double_text_encoder import DoubleTextEncoder
from refiners_sd.clip.text_encoder import (
    CLIPTextEncoder,
    CLIPTextEncoderG,
    CLIPTextEncoderL,
    CLIPTextOutput,
    EOSPooling,
    Pooling,
    PositionalEmbedding,
    TextProjection,
    TokenEmbedding,
    TokenEncoder,
)
from refiners_sd.clip.tokenizer import CLIPTokenizer
from refiners_sd.clip.transformer import (
    CLIPTransformer,
    FeedForward,
    TransformerLayer,
    activation_from_name,
    clip_transformer_map,
    record_penultimate,
    transformer_layer_map,
)

__all__ = [
    "CLIP_TEXT_G",
    "CLIP_TEXT_L",
    "CLIPTextConfig",
    "CLIPTextEncoder",
    "CLIPTextEncoderG",
    "CLIPTextEncoderL",
    "CLIPTextOutput",
    "CLIPTokenizer",
    "CLIPTransformer",
    "DoubleTextEncoder",
    "EOSPooling",
    "FeedForward",
    "Pooling",
    "PositionalEmbedding",
    "TextProjection",
    "TokenEmbedding",
    "TokenEncoder",
    "TransformerLayer",
    "activation_from_name",
    "clip_transformer_map",
    "record_penultimate",
    "transformer_layer_map",
]
