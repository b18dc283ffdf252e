"""Bundles as filesystems: ``vfs`` (read-only view) and ``overlay`` (copy-on-write view) in plain
Python, ``commit`` (a view's changes become a bundle), ``mount`` (the FUSE adapter and verbs)."""

DEFAULT_PREFETCH = 8  # chunks read ahead of a sequential reader (about 8 MiB)
