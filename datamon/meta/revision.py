"""The schema revisions this datamon understands (no imports: read on the CLI's fast path)."""

from __future__ import annotations

from typing import Final

# Every revision in ``migrations/versions``, oldest first. Keep in sync with the migration files
# (a test checks it against Alembic's script directory).
KNOWN_REVISIONS: Final[tuple[str, ...]] = ("0001", "0002", "0003", "0004", "0005", "0006", "0007")
HEAD_REVISION: Final[str] = KNOWN_REVISIONS[-1]
