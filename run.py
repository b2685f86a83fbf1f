"""Entry point: `python run.py --help`."""

from pml_jax.cli import run

if __name__ == "__main__":
    run()
