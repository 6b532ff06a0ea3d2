"""Live capture of a PyTorch process into the store (see `session` for the contract).

The public entry is the function `hybridscope.capture(...)` (hybridscope/__init__.py), which
forwards to `session.capture`; this package is named `live` so that the function and the package
are two names, not one name held by whichever object was bound last.
"""
