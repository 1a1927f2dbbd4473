"""The ``tdpsim`` command line: thin — parse, call the library, hand results to rich."""
