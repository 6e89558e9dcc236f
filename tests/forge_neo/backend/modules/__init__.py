"""Stand-in for Forge Neo's ``backend/modules`` package."""
