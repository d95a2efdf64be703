"""Tests that need only numpy, ml_dtypes, hypothesis and pytest: never torch."""
