"""Backends: where jobs run. Each implements the small `Backend` interface in `base`."""
