"""Engines: what the command line's commands compute, as library code returning plain data.

- :mod:`.tree`: the leaves of a checkpoint (tensors and plain values by dotted key path), the
  entry under a key, JSON-safe renderings of values, and :class:`~.tree.Failure`.
- :mod:`.inspect`: :func:`~.inspect.inspect_summary` (everything ``pthfmt inspect`` shows).
- :mod:`.diff`: :func:`~.diff.diff_summary` and :func:`~.diff.compare_values`.
- :mod:`.convert`: :func:`~.convert.convert` and :class:`~.convert.Conversion`.

The command line (:mod:`pthfmt.cli`) only parses arguments, calls these and prints.
"""
