"""The command line: app.py builds the Typer app; one module per command, each a thin function
that parses, calls one domain function and prints its result."""
