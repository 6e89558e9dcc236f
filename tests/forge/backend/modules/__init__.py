"""Stand-in for Forge's ``backend/modules`` package."""
