"""What the test suites share: the servers they run and the checker of what
clients were told.

- ``inproc.InProcessServer``: a server in this process, on its own loop thread.
- ``process.ServerProcess``: ``python server.py`` as a child process.
- ``journal``: a journal of what clients were told, and ``check_store``.
"""
