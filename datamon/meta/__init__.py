"""The metadata layer: repos, bundles, labels, the object index, LFS ids, in one SQL database.

``store.MetadataStore`` is the entry point. Nothing here imports ``datamon.cas``, and nothing is
imported eagerly from this package so that ``import datamon.meta.records`` stays cheap.
"""
