"""Reading and writing: model files (safetensors + JSON metadata)."""

from sbitk.io.modelfile import FORMAT_VERSION, load_model, read_metadata, save_model

__all__ = ["FORMAT_VERSION", "load_model", "read_metadata", "save_model"]
