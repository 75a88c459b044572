"""The pipeline's stages: small classes with a documented ``process_batch``."""
