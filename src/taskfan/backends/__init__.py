"""Backends: one module each, imported only when a run asks for it by name."""
