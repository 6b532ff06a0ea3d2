"""Finding the model in a user's script: the first top-level module call that is a hybrid model.

`Finder` installs torch's *global* module forward hooks (they see every `nn.Module` call in the
process) until it has found the model, then removes them and arms the capture on it, in the
middle of that first call (which becomes step 0). Without a name only top-level calls are
checked (no other module call running: a depth count kept by the global pre/post hooks). The match:

- `name` None: the module holds a recognized decoder block with a typed child (`live.plan.is_hybrid_model`: hybrids, attention-only and pure SSM / recurrent models alike),
  checked once per distinct module object;
- `name` an identifier path (`model`, `runner.model`): the object at that path in the script's
  globals (`sys.modules['__main__']` while runpy runs the script) is this module;
- otherwise `name` is a class name: `type(module).__name__ == name`.

Until the model is found the global hooks cost one Python call per module call; afterwards nothing.
"""

from __future__ import annotations

import sys

from hybridscope.live.hooks import is_hybrid_model


class Finder:
    def __init__(self, cap, name: str | None = None):
        from torch.nn.modules import module as nn_module

        self.cap, self.name = cap, name
        self.depth = 0
        self.seen: set[int] = set()
        self.found = None
        self.handles = [
            nn_module.register_module_forward_pre_hook(self._pre),
            nn_module.register_module_forward_hook(self._post, always_call=True),
        ]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _pre(self, module, args):
        self.depth += 1
        top = self.depth == 1 or self.name is not None  # a named model may sit inside a wrapper
        if not top or self.found is not None or id(module) in self.seen:
            return
        self.seen.add(id(module))
        with self.cap.faults.guard("find"):
            if self._matches(module):
                self.found = module
                self.remove()
                self.cap.attach(module, in_forward=True)

    def _post(self, module, args, output):
        self.depth = max(0, self.depth - 1)

    def _matches(self, module) -> bool:
        if self.name is None:
            return is_hybrid_model(module)
        if type(module).__name__ == self.name:
            return True
        return _lookup(self.name) is module


def _lookup(path: str):
    """The object at a dotted attribute path in the running script's globals, or None."""
    main = sys.modules.get("__main__")
    head, *rest = path.split(".")
    obj = getattr(main, head, None)
    for part in rest:
        obj = getattr(obj, part, None)
    return obj
