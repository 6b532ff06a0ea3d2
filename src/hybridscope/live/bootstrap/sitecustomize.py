"""Arms `hybridscope trace` in every Python process started below it (see hybridscope.live.follow).

`hybridscope trace` puts this folder first on the children's PYTHONPATH and the trace's folder (its
options.json, the processes' stores and records) in HYBRIDSCOPE_TRACE, as coverage.py's `patch = subprocess` does with a `.pth` file and an environment
variable; Python imports this module at start-up (`site`). Without HYBRIDSCOPE_TRACE it does nothing
but run the `sitecustomize` it shadows, if there is one. It imports only the standard library and
`hybridscope.live.follow` (which imports no torch): torch is watched for, not imported.
"""

import os
import sys


def _arm() -> None:
    folder = os.environ.get("HYBRIDSCOPE_TRACE")
    if not folder:
        return
    # the tracer's own hybridscope (this file is its live/bootstrap/), whatever else the child's
    # sys.path holds: imported from there once, it stays the one the process uses
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    try:
        sys.path.insert(0, src)
        try:
            from hybridscope.live import follow
        finally:
            sys.path.remove(src)
        follow.start(folder)
    except Exception as e:  # noqa: BLE001 - never take the process down: say it once and run untraced
        print(f"hybridscope trace: capture not armed in pid {os.getpid()}: {type(e).__name__}: {e}",
              file=sys.stderr)


def _chain() -> None:
    """Run the sitecustomize this one shadows (a distribution's or a user's), as Python would have."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    if not any(os.path.exists(os.path.join(p or os.curdir, name)) for p in sys.path
               for name in ("sitecustomize.py", "sitecustomize")):
        return  # the usual case, checked without importing importlib.util (several ms of start-up)
    from importlib.machinery import PathFinder
    from importlib.util import module_from_spec

    spec = PathFinder.find_spec("sitecustomize", sys.path)
    if spec is None or spec.loader is None:
        return
    module = module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


_arm()
_chain()
