"""Test harness shared by every component's tests: real redis-server processes and a real store.

Imported as ``support`` (``tests/`` is on ``sys.path`` because ``tests/conftest.py`` lives there).
"""
