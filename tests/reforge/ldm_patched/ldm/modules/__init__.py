"""Stand-in for ``ldm_patched/ldm/modules`` of reForge."""
