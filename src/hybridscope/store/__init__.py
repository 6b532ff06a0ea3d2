"""The store: one DuckDB file (schema.sql), opened and written through `db`."""
