"""`python -m bundler`: the same commands as the `bundler` script (tests and benches
start the service this way, from the checkout they run in)."""

import sys

from bundler.cli import main

sys.exit(main())
