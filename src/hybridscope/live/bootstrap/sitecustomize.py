"""Arms `hybridscope trace` in every Python process started below it (see hybridscope.live.follow).

`hybridscope trace` puts this folder first on the children's PYTHONPATH and the trace's options in
HYBRIDSCOPE_TRACE, as coverage.py's `patch = subprocess` does with a `.pth` file and an environment
variable; Python imports this module at start-up (`site`). Without HYBRIDSCOPE_TRACE it does nothing
but run the `sitecustomize` it shadows, if there is one. It imports only the standard library and
`hybridscope.live.follow` (which imports no torch): torch is watched for, not imported.
"""

import os
import sys


def _arm() -> None:
    text = os.environ.get("HYBRIDSCOPE_TRACE")
    if not text:
        return
    try:
        try:
            from hybridscope.live import follow
        except ImportError:  # the child's sys.path lacks the tracer's hybridscope: append its source
            import json

            sys.path.append(json.loads(text)["src"])
            from hybridscope.live import follow
        follow.start(text)
    except Exception as e:  # noqa: BLE001 - never take the process down: say it once and run untraced
        print(f"hybridscope trace: capture not armed in pid {os.getpid()}: {type(e).__name__}: {e}",
              file=sys.stderr)


def _chain() -> None:
    """Run the sitecustomize this one shadows (a distribution's or a user's), as Python would have."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
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
