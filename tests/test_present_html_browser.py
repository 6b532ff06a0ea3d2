"""The HTML report in a real headless Chromium: it loads with no console output, its script runs,
every plot is drawn with the marks its data calls for, and a screenshot is a real picture."""

import shutil
import struct
import subprocess

import pytest
import report_scenario

from hybridscope.analyze.report import build_report
from hybridscope.present import html

pytestmark = pytest.mark.browser

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it: apt-get install chromium)",
                allow_module_level=True)


def chromium(url: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([CHROMIUM, *flags, *args, url], check=False, capture_output=True, text=True, timeout=60)


def console_lines(stderr: str) -> list[str]:
    """Every console message and uncaught error Chromium logged (it logs them as INFO:CONSOLE)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("browser")
    con, run = report_scenario.build(d / "run.duckdb")
    rep = build_report(con, run)
    con.close()
    path = d / "report.html"
    path.write_text(html.render(rep), encoding="utf-8")
    return path, rep


def test_loads_without_console_output_and_draws_every_plot(report_file, tmp_path):
    path, rep = report_file
    got = chromium(path.as_uri(), tmp_path, "--dump-dom")
    assert got.returncode == 0, got.stderr[-2000:]
    assert console_lines(got.stderr) == []
    assert 'data-ready="1"' in got.stdout  # the inline script ran to its end
    marks = report_scenario.plot_marks(got.stdout)
    for plot, (mark, n) in report_scenario.expected_marks(rep).items():
        assert n > 0 and marks[plot].get(mark) == n, (plot, mark, marks.get(plot))


def test_harness_sees_script_errors(tmp_path):
    """The check above can fail: a page with a script error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>")
    got = chromium(bad.as_uri(), tmp_path, "--dump-dom")
    assert any("undefinedFunction" in line for line in console_lines(got.stderr))


def test_screenshot(report_file, tmp_path):
    path, _ = report_file
    shot = tmp_path / "report.png"
    got = chromium(path.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1280,2400",
                   "--hide-scrollbars")
    assert got.returncode == 0 and shot.exists(), got.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (1280, 2400)
    assert len(data) > 100_000  # charts and tables, not a blank page (a blank one is a few KB)


PLOT_TABLES = {"cdf": "latency_cdf", "layers": "decompose_layer", "steps": "step_stack_bins",
               "experts": "expert_load", "imbalance": "expert_steps", "overlap": "overlap", "gaps": "gap_histogram"}


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    """The README's demo (two expert-parallel ranks, a layers-mode capture on CPU), fewer requests."""
    import sys

    from hybridscope.store import db

    d = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([sys.executable, "-m", "hybridscope", "demo", "--out", str(d), "--device", "cpu",
                           "--requests", "4"], check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    con = db.open_readonly(d / "run.duckdb")
    try:
        rep = build_report(con, 1)
    finally:
        con.close()
    return d / "report.html", rep


def test_demo_report_draws_every_panel_or_says_why_in_one_line(demo_report, tmp_path):
    from html import unescape

    path, rep = demo_report
    got = chromium(path.as_uri(), tmp_path, "--dump-dom")
    assert got.returncode == 0 and console_lines(got.stderr) == [], got.stderr[-2000:]
    dom = got.stdout
    assert "no data" not in dom
    marks = report_scenario.plot_marks(dom)
    for plot, (mark, n) in report_scenario.expected_marks(rep).items():
        if plot in marks:
            assert n > 0 and marks[plot].get(mark) == n, (plot, mark, marks[plot])
        else:  # the run cannot have it: the reason is said in one line (once a section)
            why = rep.why(PLOT_TABLES[plot])
            assert why and '<p class="why" data-for="' in dom and why in unescape(dom), plot
    assert marks["cdf"]["path.series"] >= 5  # from the layer timings: a layers-mode run has no kernels
    assert marks["experts"]["rect.scale"] == 20  # the heat map's colour scale
    assert "share of calls ≤ x" in dom and "call duration (log scale)" in dom
