"""The CLIP vision tower (with projection) that turns images into IP-Adapter image features."""

from refiners_ip_adapter.image_encoder.config import CLIP_VIT_H, CLIPImageConfig
from refiners_ip_adapter.image_encoder.model import CLIPImageEncoder, CLIPImageOutput
from refiners_ip_adapter.image_encoder.preprocessing import preprocess_images

__all__ = ["CLIP_VIT_H", "CLIPImageConfig", "CLIPImageEncoder", "CLIPImageOutput", "preprocess_images"]
