"""Live capture of a PyTorch process into the store (see `session` for the contract).

`hybridscope.capture(...)` is the public entry. Importing any submodule of this package binds the
package itself to the attribute `hybridscope.capture`, replacing the forwarding function of
`hybridscope/__init__.py`; so the package module is made callable and forwards to
`session.capture`, and `hybridscope.capture(...)` works whichever object the name holds.
"""

from __future__ import annotations

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from hybridscope.capture.session import capture

        return capture(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
