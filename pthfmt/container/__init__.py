"""Container formats: the zip archive, the legacy pickle stream and the old tar file."""
