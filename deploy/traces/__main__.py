"""``python -m deploy.traces``: the ecotel-trace command."""

import sys

from deploy.traces.cli import main

sys.exit(main())
