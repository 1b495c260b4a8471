"""The evaluation job (``calguide-eval``): metrics of an existing ``.npz`` of samples."""
