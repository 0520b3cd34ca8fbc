"""Developer tools run from a checkout (``python -m tools.<name>``): parity checks against reference
fixtures and synthetic test scenes. Not part of the installed package; tests and benchmarks import them."""
