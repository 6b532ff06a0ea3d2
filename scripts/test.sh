#!/usr/bin/env bash
# Install everything the tests need on a fresh machine, then run them. README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
# The CPU build of torch first: an unpinned torch would pull gigabytes of CUDA packages.
"$py" -c "import torch" 2>/dev/null || "$py" -m pip install -q torch==2.13.0
"$py" -m pip install -q -e '.[test]'
# Debian's chromium (the HTML report's browser test) and prometheus (a real server scrapes the live
# exporter; promtool checks the alert rules).
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
if [ "${#need[@]}" -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null) \
    || echo "note: ${need[*]} could not be installed; the tests that need them will be skipped" >&2
fi
exec "$py" -m pytest "$@"
