"""JUnit XML for `hybridscope check`: one test case per (group, statistic), failures for regressions."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from hybridscope.table import Table


def to_junit(table: Table, *, suite: str = "hybridscope.check") -> str:
    """A <testsuites> document; statuses 'new', 'missing' and 'too few' are skipped cases."""
    recs = table.to_records()
    failures = sum(1 for r in recs if r["status"] == "regressed")
    skipped = sum(1 for r in recs if r["status"] in ("new", "missing", "too few"))
    root = ET.Element("testsuites", name=suite, tests=str(len(recs)), failures=str(failures))
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(recs)), failures=str(failures),
                       skipped=str(skipped), errors="0")
    for r in recs:
        case = ET.SubElement(ts, "testcase", classname=f"{suite}.{r['group']}", name=r["stat"])
        if r["status"] == "regressed":
            msg = (f"{r['stat']} of {r['group']} {r['change_pct']:+.1f}% "
                   f"(CI {r['ci_lo_pct']:+.1f}%…{r['ci_hi_pct']:+.1f}%), limit +{r['limit_pct']:.1f}%")
            ET.SubElement(case, "failure", message=msg, type="regression").text = (
                f"baseline {r['base_ns']:.0f} ns, run {r['new_ns']:.0f} ns, n {r['n_base']} vs {r['n_new']}")
        elif r["status"] in ("new", "missing", "too few"):
            ET.SubElement(case, "skipped", message=r["status"])
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
