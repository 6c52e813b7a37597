"""The HTML report: one self-contained file, plots embedded as base64 PNG.

The page has no external reference at all: styles are inline, images are ``data:`` URIs, and a
Content-Security-Policy forbids the browser from fetching anything else. A short inline script
records on ``<body>`` how many images decoded (``data-images-decoded`` of
``data-images-total``), so that a headless browser can check the page. All text is escaped.

Layout: the title, the provenance lines, a summary table with one verdict line per check
(pass / warn / fail, statistic, threshold), then one section per part. Parts that were not
computed appear as a section with a note saying so, rather than failing the report.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sbitk.diagnostics._checks import as_numpy
from sbitk.diagnostics.c2st import C2STResult
from sbitk.diagnostics.contraction import ContractionResult
from sbitk.diagnostics.coverage import CoverageResult, TARPResult
from sbitk.diagnostics.lc2st import LocalC2STResult
from sbitk.diagnostics.misspecification import MMDResult, TypicalityResult
from sbitk.diagnostics.ppc import PPCResult
from sbitk.diagnostics.sbc import SBCResult
from sbitk.errors import SbitkError
from sbitk.io.atomic import write_text
from sbitk.report import checks as _checks
from sbitk.report.checks import Check, overall_status

__all__ = ["Section", "build_report", "report_sections", "write_report"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ReportError(SbitkError, ValueError):
    """A report part has the wrong type or shape."""


@dataclass(frozen=True)
class Section:
    """One section of the report.

    Attributes:
        title: the heading.
        figures: matplotlib Figures or PNG bytes, shown in order.
        captions: one caption per figure (optional; used as the image's alt text too).
        text: paragraphs of plain text (escaped).
        checks: the verdicts this section supports; they are listed in the summary.
        table: rows of a table, the first row its header.
        note: shown instead of content when the part was not computed.
    """

    title: str
    figures: tuple[Any, ...] = ()
    captions: tuple[str, ...] = ()
    text: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()
    table: tuple[tuple[str, ...], ...] = ()
    note: str = ""
    anchor: str = field(default="", compare=False)


def _png(figure: Any, dpi: int, close: bool) -> bytes:
    if isinstance(figure, (bytes, bytearray)):
        data = bytes(figure)
        if not data.startswith(_PNG_MAGIC):
            raise ReportError("a figure given as bytes must be a PNG image")
        return data
    if not hasattr(figure, "savefig"):
        raise ReportError(
            f"a figure must be a matplotlib Figure or PNG bytes, got {type(figure).__name__}"
        )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    if close:
        import matplotlib.pyplot as plt

        plt.close(figure)
    return buffer.getvalue()


def _slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, k = base, 2
    while slug in used:
        slug, k = f"{base}-{k}", k + 1
    used.add(slug)
    return slug


#: Resolution of the embedded PNGs: a 6-inch figure is 900 px, most of the page's width (at 100
#: dpi the plots were 400 px wide on a 1,400 px page).
DPI = 150

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d1d1f;
background:#fafafa;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:1.5rem}
h1{font-size:1.6rem;margin:0 0 .3rem}h2{font-size:1.25rem;margin:0 0 .6rem}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:1rem 1.2rem;margin:1rem 0}
.meta{color:#555;font-size:.9rem;margin:.1rem 0}
table{border-collapse:collapse;font-size:.9rem;margin:.4rem 0}
td,th{border-bottom:1px solid #e5e5e5;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.badge{display:inline-block;min-width:3.2rem;text-align:center;border-radius:4px;
font-weight:600;font-size:.8rem;padding:.1rem .4rem;color:#fff}
.pass{background:#2e7d32}.warn{background:#b26a00}.fail{background:#c62828}.none,.skip{background:#777}
.verdict{font-size:1.05rem;margin:.6rem 0}
figure{margin:.6rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.85rem}
.note{color:#666;font-style:italic}
nav a{margin-right:.8rem;font-size:.9rem}
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, decoded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { decoded++; }
  }
  document.body.setAttribute("data-images-total", String(images.length));
  document.body.setAttribute("data-images-decoded", String(decoded));
});
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _badge(status: str | None) -> str:
    label = status.upper() if status else "NONE"
    return f'<span class="badge {status or "none"}">{label}</span>'


def build_report(
    sections: Sequence[Section],
    title: str = "sbitk report",
    *,
    meta: Mapping[str, Any] | None = None,
    dpi: int = DPI,
    close_figures: bool = True,
) -> str:
    """Render sections into one self-contained HTML page.

    Args:
        sections: the report's sections, e.g. from :func:`report_sections`.
        title: the page title.
        meta: provenance shown under the title (simulator, model hash, seed, ...).
        dpi: resolution of the embedded PNGs.
        close_figures: close each matplotlib Figure once it is embedded (frees its memory).

    Returns:
        The HTML document.

    Example:
        >>> from sbitk.report.checks import Check
        >>> page = build_report([Section("Coverage", checks=(Check("coverage", "pass", "0.01",
        ...                      "bounds"),))], title="demo <1>")
        >>> "<title>demo &lt;1&gt;</title>" in page and "PASS" in page
        True
    """
    esc = html.escape
    all_checks = [c for s in sections for c in s.checks]
    status = overall_status(all_checks)
    used: set[str] = {"summary"}
    anchors = [_slug(s.anchor or s.title, used) for s in sections]
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style>",
        f"<script>{_SCRIPT}</script>",
        "</head>",
        "<body>",
        "<main>",
        f"<h1>{esc(title)}</h1>",
    ]
    info = dict(meta or {})
    info.setdefault("created", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    for key, value in info.items():
        out.append(f'<p class="meta"><b>{esc(str(key))}</b>: {esc(str(value))}</p>')
    nav = " ".join(f'<a href="#{a}">{esc(s.title)}</a>' for s, a in zip(sections, anchors))
    out.append(f'<nav><a href="#summary">Summary</a> {nav}</nav>')

    out.append('<section id="summary">')
    out.append("<h2>Summary</h2>")
    counts = {k: sum(c.status == k for c in all_checks) for k in ("pass", "warn", "fail", "skip")}
    if status is None and not all_checks:
        out.append('<p class="verdict note">No checks were run.</p>')
    else:
        tally = ", ".join(f"{n} {'skipped' if k == 'skip' else k}" for k, n in counts.items() if n)
        out.append(f'<p class="verdict">Overall: {_badge(status)} ({esc(tally)})</p>')
        out.append("<table>")
        out.append(
            "<tr><th>verdict</th><th>check</th><th>statistic</th><th>threshold</th>"
            "<th>detail</th></tr>"
        )
        for c in all_checks:
            out.append(
                f'<tr class="check" data-status="{c.status}"><td>{_badge(c.status)}</td>'
                f"<td>{esc(c.name)}</td><td>{esc(c.statistic)}</td><td>{esc(c.threshold)}</td>"
                f"<td>{esc(c.detail)}</td></tr>"
            )
        out.append("</table>")
    out.append("</section>")

    for section, anchor in zip(sections, anchors):
        out.append(f'<section id="{anchor}">')
        out.append(f"<h2>{esc(section.title)}</h2>")
        if section.note:
            out.append(f'<p class="note">{esc(section.note)}</p>')
        for c in section.checks:
            out.append(f"<p>{_badge(c.status)} {esc(c.line().split(' ', 1)[1].strip())}</p>")
        for paragraph in section.text:
            out.append(f"<p>{esc(paragraph)}</p>")
        if section.table:
            header, *rows = section.table
            out.append("<table>")
            out.append("<tr>" + "".join(f"<th>{esc(str(h))}</th>" for h in header) + "</tr>")
            for row in rows:
                out.append("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in row) + "</tr>")
            out.append("</table>")
        for k, figure in enumerate(section.figures):
            caption = section.captions[k] if k < len(section.captions) else section.title
            data = base64.b64encode(_png(figure, dpi, close_figures)).decode("ascii")
            out.append("<figure>")
            out.append(f'<img src="data:image/png;base64,{data}" alt="{esc(caption)}">')
            out.append(f"<figcaption>{esc(caption)}</figcaption>")
            out.append("</figure>")
        out.append("</section>")
    out += ["</main>", "</body>", "</html>", ""]
    return "\n".join(out)


def write_report(
    path: str | os.PathLike,
    sections: Sequence[Section],
    title: str = "sbitk report",
    *,
    meta: Mapping[str, Any] | None = None,
    dpi: int = DPI,
    force: bool = False,
) -> Path:
    """Build the report and write it atomically to ``path``.

    Args:
        path: the output ``.html`` file.
        sections: see :func:`build_report`.
        title: see :func:`build_report`.
        meta: see :func:`build_report`.
        dpi: see :func:`build_report`.
        force: replace an existing file.

    Returns:
        The path written.

    Raises:
        OutputExistsError: the file exists and ``force`` is false.
        OutputError: the path cannot be written.
    """
    from sbitk.io.atomic import check_output

    check_output(path, force=force)  # before rendering the figures, which takes a while
    return write_text(path, build_report(sections, title, meta=meta, dpi=dpi), force=force)


def _missing(title: str, argument: str) -> Section:
    return Section(title, note=f"Not computed in this run (no {argument} given).")


def _posterior_sections(
    posterior: Any, names: Sequence[str] | None, truths: Any | None
) -> list[Section]:
    from sbitk.report.plots import pair_plot

    if isinstance(posterior, Mapping):
        items = [(str(k), v) for k, v in posterior.items()]
    else:
        draws = posterior.detach().cpu().numpy() if hasattr(posterior, "detach") else posterior
        draws = np.asarray(draws, dtype=np.float64)
        if draws.ndim == 2:
            items = [("observation 0", draws)]
        elif draws.ndim == 3:
            items = [(f"observation {b}", draws[:, b]) for b in range(draws.shape[1])]
        else:
            raise ReportError(
                f"posterior samples must have shape (n, D) or (n, B, D), got {draws.shape}"
            )
    truth_rows = None if truths is None else as_numpy(truths, "truths").reshape(len(items), -1)
    sections = []
    for b, (label, samples) in enumerate(items):
        x = samples.detach().cpu().numpy() if hasattr(samples, "detach") else samples
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ReportError(
                f"posterior samples of {label} must have shape (n, D), got {x.shape}"
            )
        labels = list(names) if names is not None else [f"theta[{d}]" for d in range(x.shape[1])]
        q = np.quantile(x, [0.05, 0.5, 0.95], axis=0)
        header = ("parameter", "mean", "sd", "5%", "median", "95%")
        sd = x.std(axis=0, ddof=1) if len(x) > 1 else np.zeros(x.shape[1])
        rows = tuple(
            (labels[d], *(f"{v:.4g}" for v in (x[:, d].mean(), sd[d], q[0, d], q[1, d], q[2, d])))
            for d in range(x.shape[1])
        )
        table = (header, *rows)
        truth = None if truth_rows is None else truth_rows[b]
        figure = pair_plot(x, labels, truth=truth, title=f"Posterior, {label}")
        sections.append(
            Section(
                f"Posterior: {label}",
                figures=(figure,),
                captions=(f"Pair plot of {len(x)} posterior draws, {label}",),
                table=table,
            )
        )
    return sections


def report_sections(
    *,
    history: Mapping[str, Sequence[float]] | Any | None = None,
    posterior: Any | None = None,
    parameter_names: Sequence[str] | None = None,
    truths: Any | None = None,
    sbc: SBCResult | None = None,
    coverage: CoverageResult | None = None,
    tarp: TARPResult | None = None,
    contraction: ContractionResult | None = None,
    ppc: PPCResult | Sequence[PPCResult] | None = None,
    misspecification: MMDResult | TypicalityResult | None = None,
    c2st: C2STResult | None = None,
    local_c2st: LocalC2STResult | Sequence[LocalC2STResult] | None = None,
    skipped: Mapping[str, str] | None = None,
) -> list[Section]:
    """The report's sections from a training history, posterior draws and diagnostics results.

    Every argument is optional: a part that is missing becomes a section with a note. Sections,
    in order: training curves, a posterior pair plot and summary table per observation, SBC
    ECDF bands, coverage, TARP, z-score against contraction, predictive checks,
    misspecification, then C2ST and local C2ST when given.

    Args:
        history: per-epoch ``train_loss`` and ``val_loss`` lists (a dict, or a training
            ``History`` with those attributes).
        posterior: draws ``(n, D)`` for one observation, ``(n, B, D)`` for several, or a mapping
            label → ``(n, D)``.
        parameter_names: names of the ``D`` parameters.
        truths: true parameters to mark on the pair plots, ``(B, D)`` (test cases only).
        sbc: :func:`sbitk.diagnostics.sbc` result.
        coverage: :func:`sbitk.diagnostics.expected_coverage` result.
        tarp: :func:`sbitk.diagnostics.tarp` result.
        contraction: :func:`sbitk.diagnostics.zscore_contraction` result.
        ppc: one :func:`sbitk.diagnostics.posterior_predictive_check` result per observation.
        misspecification: :func:`sbitk.diagnostics.mmd_test` or ``typicality_test`` result.
        c2st: :func:`sbitk.diagnostics.c2st` result (e.g. against a reference posterior).
        local_c2st: :func:`sbitk.diagnostics.local_c2st` result(s), one per observation.
        skipped: check name (``"coverage"``, ...) → why it did not run for this posterior; its
            section then shows a SKIP verdict with the reason instead of a missing part.

    Returns:
        The sections, to pass to :func:`build_report` or :func:`write_report`.
    """
    from sbitk.diagnostics import plots as dplots
    from sbitk.report import plots as rplots

    out: list[Section] = []
    if history is not None:
        out.append(
            Section(
                "Training",
                figures=(rplots.plot_training(history),),
                captions=("Loss per epoch",),
                checks=(_checks.training_check(history),),
            )
        )
    else:
        out.append(_missing("Training", "training history"))
    if posterior is not None:
        out += _posterior_sections(posterior, parameter_names, truths)
    else:
        out.append(_missing("Posterior", "posterior samples"))

    skipped = dict(skipped or {})

    def part(title, result, argument, plot, check, caption):
        name = argument.removesuffix(" result")
        if result is None and name in skipped:
            reason = skipped[name]
            return Section(title, checks=(Check.skipped(name, reason),), note=f"skipped: {reason}")
        if result is None:
            return _missing(title, argument)
        return Section(
            title, figures=(plot(result),), captions=(caption,), checks=(check(result),)
        )

    out.append(
        part(
            "Simulation-based calibration",
            sbc,
            "SBC result",
            dplots.plot_sbc_ecdf,
            _checks.sbc_check,
            "Rank ECDF minus the uniform CDF, inside simultaneous bands",
        )
    )
    out.append(
        part(
            "Expected coverage",
            coverage,
            "coverage result",
            dplots.plot_coverage,
            _checks.coverage_check,
            "Expected coverage of HPD regions against the credibility level",
        )
    )
    out.append(
        part(
            "TARP",
            tarp,
            "TARP result",
            dplots.plot_tarp,
            _checks.tarp_check,
            "TARP expected coverage probability",
        )
    )
    out.append(
        part(
            "z-score against contraction",
            contraction,
            "contraction result",
            dplots.plot_contraction,
            _checks.contraction_check,
            "Posterior z-score against posterior contraction",
        )
    )
    if ppc is not None:
        items = [ppc] if isinstance(ppc, PPCResult) else list(ppc)
        multi = len(items) > 1
        out.append(
            Section(
                "Posterior predictive checks",
                figures=tuple(rplots.plot_ppc(r) for r in items),
                captions=tuple(
                    (f"Observation {b}: " if multi else "")
                    + "replicated data against the observed value"
                    for b in range(len(items))
                ),
                checks=(_checks.ppc_check(items),) if items else (),
                note="" if items else "No predictive check results were given.",
            )
        )
    else:
        out.append(_missing("Posterior predictive checks", "predictive check result"))
    out.append(
        part(
            "Misspecification",
            misspecification,
            "misspecification result",
            rplots.plot_misspecification,
            _checks.misspecification_check,
            "Each observation against the test's reference distribution",
        )
    )
    if c2st is not None:
        out.append(Section("C2ST", checks=(_checks.c2st_check(c2st),)))
    if local_c2st is not None:
        items = [local_c2st] if isinstance(local_c2st, LocalC2STResult) else list(local_c2st)
        out.append(
            Section(
                "Local C2ST",
                checks=tuple(
                    _checks.local_c2st_check(r, f"local C2ST, observation {b}")
                    for b, r in enumerate(items)
                ),
            )
        )
    return out
