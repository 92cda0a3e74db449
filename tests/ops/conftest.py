"""Operations tests. ``ops_helpers`` is importable through pytest's ``pythonpath`` (pyproject)."""
