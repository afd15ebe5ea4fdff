"""The DuckDB file: opening, migrations, and the typed writes the stages make."""
