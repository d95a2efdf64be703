"""zip archives: record layouts, reading, writing."""
