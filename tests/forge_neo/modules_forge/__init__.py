"""Stand-in for Forge Neo's top-level ``modules_forge`` package, whose presence tells VMix it runs on the Forge
family: tests only."""
