"""``python -m tdpsim``: the same as the ``tdpsim`` script."""

from tdpsim.cli.main import main

main()
