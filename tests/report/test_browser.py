"""The report in a real browser: headless Chromium renders it and every image decodes."""

import json
import os
import re
import shutil
import subprocess
from html import unescape

import pytest

from sbitk.report import build_report, report_sections


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("chromium is not installed; CI installs it in .ci/run before the tests")
    pytest.skip("chromium is not installed (apt-get install chromium); CI runs this test")


# Added by the test only: how the browser saw the page, written into the DOM for --dump-dom.
_PROBE = """
<script>
window.addEventListener("load", function () {
  var images = Array.prototype.map.call(document.images, function (img) {
    return {width: img.naturalWidth, height: img.naturalHeight, complete: img.complete,
            shown: img.getBoundingClientRect().width};
  });
  var links = Array.prototype.map.call(document.querySelectorAll("a[href]"), function (a) {
    var href = a.getAttribute("href");
    return {href: href, resolves: href.charAt(0) === "#" &&
            document.getElementById(href.slice(1)) !== null};
  });
  var fetched = performance.getEntriesByType("resource").map(function (e) { return e.name; });
  var probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({images: images, links: links, fetched: fetched,
    sections: document.querySelectorAll("section").length,
    height: document.body.scrollHeight});
  document.body.appendChild(probe);
});
</script>
"""


def _run_chromium(browser: str, tmp_path, html_path, *extra: str) -> str:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *extra,
        html_path.as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_report_renders_in_headless_chromium(tmp_path, calibrated):
    browser = _chromium()
    page = build_report(report_sections(**calibrated), title="Browser check")
    n_images = page.count("<img ")
    assert n_images == 10
    path = tmp_path / "report.html"
    path.write_text(page.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    dom = _run_chromium(browser, tmp_path, path, "--dump-dom")

    # the report's own inline script counted the decoded images
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert f'data-images-total="{n_images}"' in body
    assert f'data-images-decoded="{n_images}"' in body

    probe = json.loads(unescape(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1)))
    assert len(probe["images"]) == n_images
    for image in probe["images"]:
        assert image["complete"] and image["width"] > 100 and image["height"] > 100
        assert image["shown"] > 0
    assert probe["links"] and all(link["resolves"] for link in probe["links"])
    assert probe["fetched"] == []  # nothing but the file itself was loaded
    assert probe["sections"] == 1 + 9  # summary + the nine parts
    assert probe["height"] > 2000
    assert "Browser check" in dom and "Simulation-based calibration" in dom


def test_a_broken_image_is_detected(tmp_path):
    """The probe is able to fail: an image that does not decode is counted as such."""
    browser = _chromium()
    page = build_report([], title="broken")
    broken = '<img src="data:image/png;base64,iVBORw0KGgoAAAA=" alt="broken">'
    path = tmp_path / "broken.html"
    path.write_text(page.replace("</main>", broken + "</main>"), encoding="utf-8")
    dom = _run_chromium(browser, tmp_path, path, "--dump-dom")
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-images-total="1"' in body and 'data-images-decoded="0"' in body
