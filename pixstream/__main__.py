"""`python -m pixstream` is the `pixstream` command."""

from pixstream.cli import main

main()
