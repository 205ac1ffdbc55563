"""`python -m nasopt` runs the command line."""

from nasopt.cli import main

main()
