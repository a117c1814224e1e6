"""srft-pipeline: Step Rejection Fine-Tuning at cluster scale."""

from pipeline.runtime import quiet_by_default

# Before any stage imports Ray, Ray Data or vLLM: they read their logging switches at import.
quiet_by_default()
