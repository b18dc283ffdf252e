"""Git LFS integration: a standalone custom transfer agent that keeps LFS objects in datamon.

``protocol`` parses and builds the JSON-lines messages, ``agent`` runs the loop,
``gitconfig`` installs the agent in git's config; storing and fetching objects is
``datamon.api.lfs``. See ``docs/lfs.md``.
"""
