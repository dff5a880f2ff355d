"""The benchmark (`make bench`, or `python -m bench --help`); not part of the service."""
