"""``python -m padnet`` runs the command line."""

import sys

from padnet.cli import main

sys.exit(main())
