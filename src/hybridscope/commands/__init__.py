"""One module per CLI verb. Each exposes `register(app)`; the verb's docstring is its --help.

Verbs stay thin: check inputs, call one function of ingest/analyze, hand the result to one
renderer of present/, print "Wrote <path>" for every file written.
"""
