"""Pure data shared by every step: the desired state and the live state (no I/O here)."""
