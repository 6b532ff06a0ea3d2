"""Running a user's script in this process with capture armed (the body of `hybridscope trace`).

The script runs through `runpy` as `__main__`, with `sys.argv` and `sys.path[0]` set as Python
would set them, so it behaves as under `python script.py ARGS`. The model is found by
`capture.find.Finder`. Whatever the script does -- returns, calls `sys.exit(n)`, raises, is
interrupted -- the capture is stopped and written first; then the script's outcome is passed on:
its exit code is returned, its own exception is printed as Python would print it (exit code 1),
Ctrl-C gives 130.
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback

from hybridscope.live.find import Finder
from hybridscope.live.session import Summary, capture


def run_traced(kind: str, target: str, args: list[str], *, db, mode: str, duration: float | None,
               steps: int | None, model: str | None, label: str | None, sample_every: int | None,
               sample_steps: int | None) -> tuple[int, Summary]:
    """Run `target` (a script path or a module name) with capture armed; (exit code, summary)."""
    cap = capture(db=db, mode=mode, label=label, steps=steps, duration=duration,
                  sample_every=sample_every, sample_steps=sample_steps)
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    code = 0
    with cap:
        finder = Finder(cap, model)
        try:
            code = _run(kind, target, args)
        except SystemExit as e:
            code = _exit_code(e.code)
        except KeyboardInterrupt:
            code = 130
        except Exception:  # noqa: BLE001 - the script's own failure, shown as Python shows it
            traceback.print_exc()
            code = 1
        finally:
            finder.remove()
            sys.argv[:], sys.path[:] = saved_argv, saved_path
    summary = cap.summary
    if finder.found is None and summary.run_id is None:
        what = f"nothing named {model!r}" if model else "no recognized hybrid model (name it with --model)"
        summary.notes.append(f"{what} ran in {target}")
    return code, summary


def _run(kind: str, target: str, args: list[str]) -> int:
    if kind == "module":
        sys.argv[:] = [target, *args]
        sys.path.insert(0, os.getcwd())  # as `python -m` does
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        sys.argv[:] = [target, *args]
        sys.path[0] = os.path.dirname(os.path.abspath(target))
        runpy.run_path(target, run_name="__main__")
    return 0


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message") prints the message and exits 1
    return 1
