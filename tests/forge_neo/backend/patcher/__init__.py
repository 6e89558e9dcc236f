"""Stand-in for Forge Neo's ``backend/patcher`` package."""
