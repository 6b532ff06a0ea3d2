"""Renderers: result tables in, text / HTML / JSON / Perfetto out. They compute no statistics."""
