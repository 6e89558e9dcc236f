"""Stand-in for ``ldm_patched/ldm/modules`` of Forge Classic."""
