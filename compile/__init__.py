"""Compile model segments into deployable artifacts (program + manifest with the state ABI)."""
