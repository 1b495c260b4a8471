"""The pipeline's command-line tools: what runs between and after jobs."""
