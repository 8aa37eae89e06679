"""`python -m tlpipe` = the `tlpipe` command."""

import sys

from tlpipe.cli.main import main

sys.exit(main())
