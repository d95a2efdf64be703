"""The ``pthfmt`` command line, run in subprocesses."""
