"""``python -m quantum``: the command line, as the ``quantum`` console script runs it (how the product starts its
own ``quantum worker`` children, with the interpreter it runs on)."""

from quantum.cli import main

main()
