"""Containers: how each file format lays out its records."""
