"""Alert bounds (analyze.alerts) -> a Prometheus rules file (YAML), one alert per layer type."""

from __future__ import annotations

from hybridscope.table import Table
from hybridscope.units import format_ns


def render_rules(bounds: Table, *, for_: str = "5m", window: str = "5m") -> str:
    name = bounds.meta["baseline"]
    margin = 100 * bounds.meta["margin"]
    lines = [f"# hybridscope alert rules from baseline {name!r}: a layer type's live p99 above its baseline",
             f"# p99 + {margin:g}% for {for_}. Check: promtool check rules FILE. Regenerate with",
             f"# hybridscope baseline export-rules {name} --db STORE --out FILE.",
             "groups:", f"  - name: hybridscope-baseline-{_slug(name)}", "    rules:"]
    for r in bounds.to_records():
        lt = r["layer_type"]
        expr = (f"histogram_quantile(0.99, sum by (le, rank) (rate(hybridscope_layer_seconds_bucket"
                f"{{layer_type=\"{lt}\"}}[{window}]))) > {r['bound_s']:.9g}")
        lines += [f"      - alert: HybridscopeP99AboveBaseline_{_slug(lt)}",
                  f"        expr: '{expr}'",
                  f"        for: {for_}",
                  "        labels:",
                  "          severity: warning",
                  f"          layer_type: {lt}",
                  f"          baseline: '{name}'",
                  "        annotations:",
                  (f"          summary: '{lt} p99 on rank {{{{ $labels.rank }}}} is {{{{ $value | humanizeDuration }}}}, "
                   f"above baseline {name} ({format_ns(r['p99_ns'])} + {margin:g}%)'")]
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in str(text))
