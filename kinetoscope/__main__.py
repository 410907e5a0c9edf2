"""`python -m kinetoscope` runs the `kinetoscope` command."""

import sys

from kinetoscope.cli import main

sys.exit(main())
