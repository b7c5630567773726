"""The rootdir's conftest: pytest puts tests/ on sys.path, so helpers import as top-level modules.

Shared paths live in tests/repopaths.py.
"""
