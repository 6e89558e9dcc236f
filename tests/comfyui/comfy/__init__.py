"""Stand-in for ComfyUI's ``comfy`` package (0.8.0): only the modules VMix's ComfyUI nodes and their tests touch."""
