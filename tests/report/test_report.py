"""HTML report: verdict lines from real diagnostics, self-contained valid HTML, escaped text."""

import base64
import io
import re
import subprocess
import sys
from html.parser import HTMLParser

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest

from sbitk.errors import SbitkError
from sbitk.io.atomic import OutputExistsError
from sbitk.report import (
    Check,
    Section,
    build_report,
    overall_status,
    report_sections,
    write_report,
)
from sbitk.report import checks as ch
from sbitk.report.plots import pair_plot

VOID = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "wbr", "source"}


class _Page(HTMLParser):
    """Collects tags, ids, references, and any nesting error."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[str] = []
        self.ids: list[str] = []
        self.refs: list[tuple[str, str, str]] = []
        self.statuses: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        for key in ("src", "href", "action", "srcset", "data", "poster"):
            if key in attrs:
                self.refs.append((tag, key, attrs[key]))
        if tag == "tr" and "data-status" in attrs:
            self.statuses.append(attrs["data-status"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    assert page.startswith("<!DOCTYPE html>")
    assert parser.tags.count("html") == parser.tags.count("head") == parser.tags.count("body") == 1
    assert len(parser.ids) == len(set(parser.ids))
    return parser


def _assert_self_contained(parser: _Page) -> None:
    for tag, key, value in parser.refs:
        if key == "href":
            assert value.startswith("#") and value[1:] in parser.ids, value
        else:
            assert tag == "img" and value.startswith("data:image/png;base64,"), value[:40]


def test_verdicts_of_calibrated_and_overconfident_posteriors(calibrated, overconfident):
    good = [
        ch.sbc_check(calibrated["sbc"]),
        ch.coverage_check(calibrated["coverage"]),
        ch.tarp_check(calibrated["tarp"]),
        ch.contraction_check(calibrated["contraction"]),
        ch.training_check(calibrated["history"]),
    ]
    assert [c.status for c in good] == ["pass"] * 5
    bad = [
        ch.sbc_check(overconfident["sbc"]),
        ch.coverage_check(overconfident["coverage"]),
        ch.tarp_check(overconfident["tarp"]),
        ch.contraction_check(overconfident["contraction"]),
    ]
    assert [c.status for c in bad] == ["fail"] * 4
    assert "overconfident" in bad[0].detail and "overconfident" in bad[1].detail
    tarp = overconfident["tarp"]
    assert bad[2].statistic.startswith(f"KS {tarp.ks_statistic:.3f}")
    assert f"{tarp.threshold:.3f}" in bad[2].threshold
    # the far observation (row 1) is flagged by both the predictive check and the MMD test
    ppc = ch.ppc_check(calibrated["ppc"])
    assert ppc.status == "fail" and "observation 1" in ppc.detail
    assert "observation 0" not in ppc.detail
    assert ch.ppc_check(calibrated["ppc"][0]).status == "pass"
    mmd = ch.misspecification_check(calibrated["misspecification"])
    assert mmd.status == "fail" and mmd.detail == "flagged: observation 1"
    assert overall_status(good) == "pass" and overall_status([*good, mmd]) == "fail"
    assert overall_status([]) is None


def test_training_check_edge_cases():
    assert ch.training_check({"train_loss": [1.0, float("nan")]}).status == "fail"
    assert ch.training_check({"train_loss": [], "val_loss": []}).status == "warn"
    improving = ch.training_check({"train_loss": [2.0, 1.0], "val_loss": [2.0, 1.5]})
    assert improving.status == "pass" and "still improving" in improving.detail
    assert "epoch 2 of 2" in improving.statistic
    from sbitk.inference.training import History

    history = History(train_loss=[2.0, 1.0, 0.9], val_loss=[2.1, 1.2, 1.3])
    check = ch.training_check(history)
    assert check.status == "pass" and "1.2 at epoch 2 of 3" in check.statistic
    sections = report_sections(history=history)
    assert sections[0].checks == (check,) and len(sections[0].figures) == 1
    plt.close("all")


def test_check_line_and_status_validation():
    line = Check("coverage", "warn", "+0.10", "bounds", "conservative").line()
    assert line == "WARN  coverage: +0.10; threshold bounds; conservative"
    with pytest.raises(SbitkError, match="'ok'"):
        Check("x", "ok", "", "")


def test_full_report_structure_and_escaping(calibrated):
    plt.close("all")
    sections = report_sections(**calibrated)
    titles = [s.title for s in sections]
    assert titles == [
        "Training",
        "Posterior: observation 0",
        "Posterior: observation 1",
        "Simulation-based calibration",
        "Expected coverage",
        "TARP",
        "z-score against contraction",
        "Posterior predictive checks",
        "Misspecification",
    ]
    page = build_report(sections, title="Run <b>&</b>", meta={"simulator": "toy <x>"})
    parser = _parse(page)
    _assert_self_contained(parser)
    assert "<title>Run &lt;b&gt;&amp;&lt;/b&gt;</title>" in page
    assert "toy &lt;x&gt;" in page and "<x>" not in page
    assert "log <sigma>" not in page and "log &lt;sigma&gt;" in page
    assert re.search(r"https?://", page.replace("http-equiv", "")) is None
    # one verdict line per check, in section order, in the summary at the top
    expected = ["pass", "pass", "pass", "pass", "pass", "fail", "fail"]
    assert parser.statuses == expected
    summary = page.index('id="summary"')
    assert summary < page.index('id="training"') and "Overall: " in page[summary:]
    assert 'class="badge fail">FAIL</span> (5 pass, 2 fail)' in page
    # every figure is a PNG that decodes: 1 training + 2 pair plots + 4 diagnostics + 2 PPC + MMD
    images = [v for tag, _, v in parser.refs if tag == "img"]
    assert len(images) == 10
    widths = []
    for uri in images:
        pixels = mpimg.imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), format="png")
        assert pixels.shape[0] > 100
        widths.append(pixels.shape[1])
    # most of the 1,100 px page: every plot at least 550 px (at 100 dpi they were about 400)
    assert min(widths) >= 550, widths
    assert plt.get_fignums() == []  # embedded figures are closed


def test_missing_parts_become_notes():
    sections = report_sections()
    assert all(s.note.startswith("Not computed") for s in sections)
    page = build_report(sections)
    parser = _parse(page)
    _assert_self_contained(parser)
    assert "No checks were run." in page and parser.statuses == []
    assert "Not computed in this run (no SBC result given)." in page


def test_posterior_forms_and_captions():
    rng = np.random.default_rng(0)
    by_label = report_sections(posterior={"x_o": rng.normal(size=(300, 2))}, truths=[0.0, 0.0])
    assert by_label[1].title == "Posterior: x_o"
    assert by_label[1].table[0] == ("parameter", "mean", "sd", "5%", "median", "95%")
    assert [row[0] for row in by_label[1].table[1:]] == ["theta[0]", "theta[1]"]
    with pytest.raises(SbitkError, match=r"\(n, D\) or \(n, B, D\)"):
        report_sections(posterior=np.zeros((2, 2, 2, 2)))
    plt.close("all")


def test_figures_as_png_bytes_and_bad_figures():
    buffer = io.BytesIO()
    fig = pair_plot(np.random.default_rng(0).normal(size=(100, 2)))
    fig.savefig(buffer, format="png")
    plt.close(fig)
    page = build_report([Section("Extra", figures=(buffer.getvalue(),), captions=("my plot",))])
    assert 'alt="my plot"' in page and page.count("data:image/png;base64,") == 1
    with pytest.raises(SbitkError, match="PNG"):
        build_report([Section("Bad", figures=(b"GIF89a",))])
    with pytest.raises(SbitkError, match="matplotlib Figure or PNG bytes"):
        build_report([Section("Bad", figures=("plot.png",))])


def test_pair_plot_input_errors():
    with pytest.raises(SbitkError, match="shape"):
        pair_plot(np.zeros((2, 2, 2)))
    with pytest.raises(SbitkError, match="names"):
        pair_plot(np.zeros((10, 2)), ["a"])
    with pytest.raises(SbitkError, match="no finite draw"):
        pair_plot(np.full((10, 2), np.nan))


def test_write_report_is_atomic_and_refuses_overwrite(tmp_path):
    path = write_report(tmp_path / "out" / "report.html", [Section("A", note="nothing")], "t")
    first = path.read_text()
    assert first.startswith("<!DOCTYPE html>")
    with pytest.raises(OutputExistsError, match="--force"):
        write_report(path, [Section("B")])
    assert path.read_text() == first
    write_report(path, [Section("B")], force=True)
    assert "<h2>B</h2>" in path.read_text()
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html"]


def test_importing_io_and_report_loads_no_heavy_dependency():
    code = (
        "import sys\n"
        "import sbitk.io.arviz, sbitk.io.atomic, sbitk.io.observed, sbitk.report\n"
        "heavy = ('matplotlib', 'arviz', 'xarray', 'pandas', 'pyarrow', 'h5netcdf')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_sbc_legend_does_not_cover_the_curve(calibrated):
    from sbitk.diagnostics.plots import plot_sbc_ecdf

    fig = plot_sbc_ecdf(calibrated["sbc"])
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert legend.y1 <= ax.get_window_extent().y0  # below the panel, not on it
    plt.close(fig)
