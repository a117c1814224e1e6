"""srft-pipeline: Step Rejection Fine-Tuning at cluster scale."""
