"""`python -m api.cli`: the `tempered` command without its console script."""

from api.cli import main

main()
