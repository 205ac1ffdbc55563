"""`python -m nasopt` runs the command line."""

from nasopt.cli.app import main

main()
