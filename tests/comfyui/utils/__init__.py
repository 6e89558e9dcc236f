"""Stand-in for ComfyUI's ``utils`` package (only ``utils.extra_config``)."""
