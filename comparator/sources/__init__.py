"""Database sources for the comparator: catalogs, keys, segment boundaries, checksums, rows."""
