"""The metadata database schema as SQLAlchemy Core tables.

This module is the source of truth the store queries against; the Alembic migrations in
``migrations/versions`` create the same tables with explicit DDL, and a test checks the two agree.
Any change here needs a new migration and a bump of ``migrate.HEAD_REVISION``.

Ids (bundle ids, tree keys, pack names, LFS oids) are lowercase hex in ``String(64)``; object keys
are raw 32-byte BLAKE3 digests. Times are integer nanoseconds since the epoch (UTC).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

# JSON text on SQLite, JSONB on PostgreSQL (so ``attrs->>'x'`` needs no parse per row there).
JSON_TEXT = Text().with_variant(JSONB(none_as_null=True), "postgresql")

repos = Table(
    "repos",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("description", Text, nullable=False, server_default=""),
    Column("created_ns", BigInteger, nullable=False),
    Column("creator_name", Text, nullable=False, server_default=""),
    Column("creator_email", Text, nullable=False, server_default=""),
)

bundles = Table(
    "bundles",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("repo_id", Integer, ForeignKey("repos.id"), nullable=False),
    Column("tree", String(64), nullable=False),
    Column("message", Text, nullable=False),
    Column("contributor_name", Text, nullable=False),
    Column("contributor_email", Text, nullable=False),
    Column("created_ns", BigInteger, nullable=False),
    Column("file_count", BigInteger, nullable=False),
    Column("total_size", BigInteger, nullable=False),
    Column("record", LargeBinary, nullable=False),
    Index("ix_bundles_repo_created", "repo_id", "created_ns"),
)

bundle_parents = Table(
    "bundle_parents",
    metadata,
    Column("bundle_id", String(64), ForeignKey("bundles.id"), primary_key=True),
    Column("position", Integer, primary_key=True, autoincrement=False),
    # No foreign key: a parent may have been deleted since, and a bundle never changes.
    Column("parent_id", String(64), nullable=False),
)

labels = Table(
    "labels",
    metadata,
    Column("repo_id", Integer, ForeignKey("repos.id"), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("bundle_id", String(64), ForeignKey("bundles.id"), nullable=False),
    Column("updated_ns", BigInteger, nullable=False),
    Column("contributor", Text, nullable=False, server_default=""),
)

label_history = Table(
    "label_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("repo_id", Integer, ForeignKey("repos.id"), nullable=False),
    Column("name", String(255), nullable=False),
    # No foreign keys: history outlives the bundles it mentions.
    Column("old_bundle_id", String(64), nullable=True),
    Column("new_bundle_id", String(64), nullable=True),
    Column("time_ns", BigInteger, nullable=False),
    Column("contributor", Text, nullable=False, server_default=""),
    Index("ix_label_history_repo_name", "repo_id", "name"),
)

packs = Table(
    "packs",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("object_count", Integer, nullable=False),
    Column("created_ns", BigInteger, nullable=False),
)

# The object index. WITHOUT ROWID on SQLite: the 32-byte key is the clustering key, which halves the
# size of a table that holds one row per chunk and makes key lookups a single b-tree descent.
objects = Table(
    "objects",
    metadata,
    Column("key", LargeBinary(32), primary_key=True),
    # No foreign key to packs: add_pack writes both in one transaction and gc removes both.
    Column("pack", String(64), nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("length", Integer, nullable=False),
    Column("raw_length", BigInteger, nullable=False),
    Column("kind", SmallInteger, nullable=False),
    Column("compression", SmallInteger, nullable=False),
    Index("ix_objects_pack", "pack"),
    sqlite_with_rowid=False,
)

lfs_objects = Table(
    "lfs_objects",
    metadata,
    Column("repo_id", Integer, ForeignKey("repos.id"), primary_key=True),
    Column("oid", String(64), primary_key=True),
    Column("file_key", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
)

locks = Table(
    "locks",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("holder", Text, nullable=False),
    Column("acquired_ns", BigInteger, nullable=False),
)

# Lineage (docs/lineage.md). A run's canonical record is in ``record`` (its BLAKE3 is the id) and in the
# blob store under ``runs/<id>``; the other columns and the two link tables are derived from it so that
# lineage walks and ``datamon query`` need no JSON parsing. Repos are named, not referenced: a run
# outlives the bundles and repos it mentions.
runs = Table(
    "runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("exit_code", Integer, nullable=True),
    Column("started_ns", BigInteger, nullable=False),
    Column("ended_ns", BigInteger, nullable=False),
    Column("command", Text, nullable=False),
    Column("params", Text, nullable=False),
    Column("contributor", Text, nullable=False),
    Column("host", Text, nullable=False),
    Column("git_commit", String(64), nullable=True),
    Column("git_dirty", SmallInteger, nullable=True),
    Column("external", SmallInteger, nullable=False),
    Column("record", LargeBinary, nullable=False),
    Index("ix_runs_started", "started_ns"),
)

run_inputs = Table(
    "run_inputs",
    metadata,
    Column("run_id", String(64), ForeignKey("runs.id"), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("repo", String(255), nullable=False),
    Column("bundle_id", String(64), nullable=False),
    Column("tree", String(64), nullable=False),
    Index("ix_run_inputs_bundle", "bundle_id"),
)

run_outputs = Table(
    "run_outputs",
    metadata,
    Column("run_id", String(64), ForeignKey("runs.id"), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("repo", String(255), nullable=False),
    Column("bundle_id", String(64), nullable=False),
    Column("tree", String(64), nullable=False),
    Index("ix_run_outputs_bundle", "bundle_id"),
)

# Rewrites and renames (docs/retention.md, migration 0004). ``bundle_rewrites``: a bundle that
# ``repo delete files`` rewrote under a new id (``new_id`` NULL for a recorded run input whose bundle
# row was already gone: only its tree was rewritten). Lookups of ``old_id`` explain where it went.
bundle_rewrites = Table(
    "bundle_rewrites",
    metadata,
    Column("old_id", String(64), primary_key=True),
    Column("new_id", String(64), nullable=True),
    Column("repo_id", Integer, ForeignKey("repos.id"), nullable=False),
    Column("old_tree", String(64), nullable=False),
    Column("new_tree", String(64), nullable=False),
    Column("reason", String(64), nullable=False),
    Column("time_ns", BigInteger, nullable=False),
    Column("contributor", Text, nullable=False, server_default=""),
    Index("ix_bundle_rewrites_new", "new_id"),
    Index("ix_bundle_rewrites_repo", "repo_id"),
)

# Former names of repos (``repo rename``). A former name stays reserved for its repo: bundle records
# and run records keep naming the repo they were written in, and this table says which repo that is.
repo_renames = Table(
    "repo_renames",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("repo_id", Integer, ForeignKey("repos.id"), nullable=False),
    Column("old_name", String(255), nullable=False),
    Column("new_name", String(255), nullable=False),
    Column("time_ns", BigInteger, nullable=False),
    Column("contributor", Text, nullable=False, server_default=""),
    Index("ix_repo_renames_old", "old_name"),
    Index("ix_repo_renames_repo", "repo_id"),
)

# Objects whose bytes ``repo delete files`` erased from every bundle: gc rewrites every stale pack
# holding one (whatever its share of garbage) and forgets the key once no pack holds it.
erasures = Table(
    "erasures",
    metadata,
    Column("key", LargeBinary(32), primary_key=True),
    Column("time_ns", BigInteger, nullable=False),
)

# Repo schemas (docs/query.md): every ``repo schema set`` adds a version; the newest is in force.
repo_schemas = Table(
    "repo_schemas",
    metadata,
    Column("repo_id", Integer, ForeignKey("repos.id"), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("schema", Text, nullable=False),  # canonical JSON; "{}" lifts the schema
    Column("time_ns", BigInteger, nullable=False),
    Column("contributor", Text, nullable=False, server_default=""),
)

# The file index behind the ``files`` view (docs/query.md, "index design"). Content-addressed like
# trees: a node is a directory (or a page of a large directory) together with the attributes of the
# files below it, and its id is a BLAKE3 of exactly what its rows hold, so bundles share every node
# they have in common. Nodes are only ever added; all three tables are derived from the blob store
# (trees and attribute objects) and ``admin reindex`` rebuilds them.
index_nodes = Table(
    "index_nodes",
    metadata,
    Column("node", LargeBinary(32), primary_key=True),
    # when the node was written or last found already indexed by an upload sharing it (gc's grace)
    Column("created_ns", BigInteger, nullable=False, server_default="0"),
    sqlite_with_rowid=False,
)

# A node's subdirectories (``name`` set) or, for a large directory, its pages (``name`` empty).
index_links = Table(
    "index_links",
    metadata,
    Column("node", LargeBinary(32), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("name", Text, nullable=False),
    Column("child", LargeBinary(32), nullable=False),
    sqlite_with_rowid=False,
)

# A node's files and symlinks, with their attributes.
index_files = Table(
    "index_files",
    metadata,
    Column("node", LargeBinary(32), primary_key=True),
    Column("name", Text, primary_key=True),
    Column("kind", SmallInteger, nullable=False),  # 1 file, 3 symlink (as in trees)
    Column("size", BigInteger, nullable=False),
    Column("key", LargeBinary(32), nullable=False),
    Column("mode", Integer, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("attrs", JSON_TEXT, nullable=True),
    sqlite_with_rowid=False,
)

# The root node of each indexed bundle. No foreign key: the bundle id determines the node (its
# record names the tree and the attributes), so a row is never wrong, only unused once the
# bundle is deleted.
bundle_index = Table(
    "bundle_index",
    metadata,
    Column("bundle_id", String(64), primary_key=True),
    Column("node", LargeBinary(32), nullable=False),
)

# Diamonds (docs/diamonds.md): many writers, one bundle. A diamond is opened on a repo, each writer
# adds a split (the root tree of what it uploaded), and one commit merges the splits' trees into a
# bundle. ``seq`` counts changes to the set of splits (a split started or finished): a commit takes
# effect only if it is still the value it merged, and a finished split's ``seq`` orders splits for
# ``last-wins``. Rows go with their repo (ON DELETE CASCADE).
diamonds = Table(
    "diamonds",
    metadata,
    Column("repo_id", Integer, ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True),
    Column("id", String(255), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("tag", Text, nullable=False, server_default=""),
    Column("created_ns", BigInteger, nullable=False),
    Column("contributor_name", Text, nullable=False, server_default=""),
    Column("contributor_email", Text, nullable=False, server_default=""),
    Column("seq", BigInteger, nullable=False, server_default="0"),
    Column("ended_ns", BigInteger, nullable=True),
    Column("bundle_id", String(64), nullable=True),
    Column("conflict_mode", String(16), nullable=True),
    Column("conflict_count", Integer, nullable=False, server_default="0"),
    Column("conflicts_blob", Text, nullable=True),
    Index("ix_diamonds_state", "state"),
)

diamond_splits = Table(
    "diamond_splits",
    metadata,
    Column("repo_id", Integer, primary_key=True),
    Column("diamond_id", String(255), primary_key=True),
    Column("id", String(255), primary_key=True),
    Column("generation", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("tag", Text, nullable=False, server_default=""),
    Column("source", Text, nullable=False, server_default=""),
    Column("tree", String(64), nullable=True),
    Column("file_count", BigInteger, nullable=False, server_default="0"),
    Column("total_size", BigInteger, nullable=False, server_default="0"),
    Column("seq", BigInteger, nullable=True),
    Column("started_ns", BigInteger, nullable=False),
    Column("ended_ns", BigInteger, nullable=True),
    Column("contributor_name", Text, nullable=False, server_default=""),
    Column("contributor_email", Text, nullable=False, server_default=""),
    Column("host", Text, nullable=False, server_default=""),
    ForeignKeyConstraint(["repo_id", "diamond_id"], ["diamonds.repo_id", "diamonds.id"], ondelete="CASCADE"),
)

# One row per version of a conflicting path (the winner has ``winner`` 1); the same list is in the
# blob store under ``diamonds.conflicts_blob``.
diamond_conflicts = Table(
    "diamond_conflicts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("repo_id", Integer, nullable=False),
    Column("diamond_id", String(255), nullable=False),
    Column("path", Text, nullable=False),
    Column("split_id", String(255), nullable=False),
    Column("kind", SmallInteger, nullable=False),
    Column("key", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("winner", SmallInteger, nullable=False),
    ForeignKeyConstraint(["repo_id", "diamond_id"], ["diamonds.repo_id", "diamonds.id"], ondelete="CASCADE"),
    Index("ix_diamond_conflicts_diamond", "repo_id", "diamond_id"),
)
