"""`python -m flowlet` runs the command line, so rules work in any environment that can import the package."""

import sys

from flowlet.cli import main

sys.exit(main())
