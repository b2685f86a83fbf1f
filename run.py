"""Entry point: `python run.py --help`."""

import sys

from pml_jax.cli import main

if __name__ == "__main__":
    sys.exit(main())
