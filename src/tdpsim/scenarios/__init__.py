"""Small, named scenarios that drive the model through its public API (an engine layer:
they import the model, never the CLI)."""
