"""``python -m datamon`` runs the CLI."""

import sys

from datamon.cli import main

sys.exit(main())
