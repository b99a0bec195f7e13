"""corelib."""
