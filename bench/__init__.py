"""Benchmarks that print their figure next to a limit measured in the same run."""
