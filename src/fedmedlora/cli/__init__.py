"""The `fedmedlora` command line."""
