"""Stand-in for ``ldm_patched/modules`` of Forge Classic."""
