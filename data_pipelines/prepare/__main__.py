"""`python -m data_pipelines.prepare`: the command line of data_pipelines/prepare/cli.py."""
import sys

from data_pipelines.prepare.cli import main

if __name__ == "__main__":
  sys.exit(main())
