"""The model registry of model jobs (SPEC §12.12)."""
