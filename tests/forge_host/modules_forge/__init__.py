"""Stand-in for Forge's top-level ``modules_forge`` package, whose presence is how VMix tells Forge from A1111.

Kept outside tests/forge so that only the Forge script tests put it on sys.path (A1111 tests must not see it).
"""
