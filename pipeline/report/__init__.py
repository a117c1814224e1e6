"""The report stage: label, masking and training statistics as Markdown/HTML with PNG plots."""
