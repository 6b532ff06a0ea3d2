"""Analyses: pure functions, a store connection and options in, a result table out. They never print."""
