"""``python -m rsjax``: the same command line as ``rsjax`` (:mod:`rsjax.cli`)."""
import sys

from rsjax.cli import main

sys.exit(main())
