"""Starts the Streams server: ``python server.py --help``."""

from streams.server import main

if __name__ == "__main__":
    main()
