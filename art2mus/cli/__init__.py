"""The `art2mus` command line."""
