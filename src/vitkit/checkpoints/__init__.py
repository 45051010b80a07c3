"""Checkpoints: format detection, converters from every peer format, vitkit's own safetensors files."""
