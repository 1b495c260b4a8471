"""The Hydra console scripts (``calguide-train``, ``-calibrate``, ``-sample``, ``-eval``,
``-lab``) and what they share (``cli``: override checks, one-line errors, the ``plugins``
list)."""
