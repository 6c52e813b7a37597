"""The documentation site works offline: its math is MathML made when the site is built
(docs/scripts/mathml.py), and it loads no script, stylesheet or font from another host."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import markdown
import pytest
from mkdocs.utils.yaml import yaml_load

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CDN = "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"
#: An address on another host: http://, https:// or protocol-relative //.
EXTERNAL = re.compile(r"^\s*(?:https?:)?//", re.I)
#: A script, stylesheet or import that an HTML, JS or CSS file loads from another host.
EXTERNAL_IN_FILE = re.compile(
    r"<script\b[^>]*\bsrc\s*=\s*[\"']?\s*(?:https?:)?//"
    r"|<link\b[^>]*\bhref\s*=\s*[\"']?\s*(?:https?:)?//"
    r"|@import\s+(?:url\()?\s*[\"']?\s*(?:https?:)?//"
    r"|\bimport\s*\(?\s*[\"'](?:https?:)?//"
    r"|\.src\s*=\s*[\"'](?:https?:)?//",
    re.I,
)


def load_mathml_hook():
    spec = importlib.util.spec_from_file_location("mathml", DOCS / "scripts" / "mathml.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def site_config() -> dict:
    with open(ROOT / "mkdocs.yml") as f:
        return yaml_load(f)


def external_assets(config: dict) -> list[str]:
    """What a site of this configuration loads from another host."""
    found = []
    for key in ("extra_javascript", "extra_css"):
        for entry in config.get(key) or []:
            path = entry.get("path", "") if isinstance(entry, dict) else str(entry)
            if EXTERNAL.match(path):
                found.append(f"{key}: {path}")
    if (config.get("theme") or {}).get("font") is not False:
        found.append("theme.font: Material loads its text fonts from Google Fonts")
    return found


def external_in_text(text: str) -> list[str]:
    return [m.group() for m in EXTERNAL_IN_FILE.finditer(text)]


def test_the_configured_site_loads_nothing_from_another_host():
    assert external_assets(site_config()) == []


def test_the_check_fails_when_a_cdn_is_put_back():
    config = site_config()
    config["extra_javascript"] = [*(config.get("extra_javascript") or []), CDN]
    assert external_assets(config) == [f"extra_javascript: {CDN}"]
    config["extra_javascript"] = [{"path": CDN, "type": "module"}]
    assert external_assets(config) == [f"extra_javascript: {CDN}"]
    assert external_in_text(f'<script src="{CDN}"></script>')
    assert external_in_text('<link rel="stylesheet" href="//cdn.example.org/katex.css">')
    assert not external_in_text('<script src="../assets/javascripts/bundle.js"></script>')


def test_no_page_script_or_stylesheet_of_the_docs_loads_from_another_host():
    found = {
        path.relative_to(DOCS).as_posix(): hits
        for path in DOCS.rglob("*")
        if path.suffix in {".md", ".html", ".js", ".css"}
        and (hits := external_in_text(path.read_text(errors="replace")))
    }
    assert found == {}


def test_the_math_of_every_page_becomes_mathml():
    """Every formula of every page converts, with no TeX left over, through the configured
    markdown extensions and the hook."""
    config = site_config()
    extensions, configs = [], {}
    for entry in config["markdown_extensions"]:
        name, options = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
        if name.startswith("pymdownx.") or name in {"tables", "admonition", "attr_list"}:
            extensions.append(name)
            configs[name] = options or {}
    assert configs["pymdownx.arithmatex"].get("generic") is True
    hook = load_mathml_hook()
    md = markdown.Markdown(extensions=extensions, extension_configs=configs)
    formulas = 0
    for page in sorted(DOCS.rglob("*.md")):
        html = hook.render_math(md.reset().convert(page.read_text()))
        formulas += html.count("<math ")
        assert "\\(" not in html and "\\[" not in html, page
        for math in re.findall(r"<math .*?</math>", html, re.S):
            assert "\\" not in math, (page, math)
    assert formulas > 100
    for page in sorted((DOCS / "families").glob("*.md")):
        if "$" in page.read_text():
            assert "<math " in hook.render_math(md.reset().convert(page.read_text())), page


def test_a_formula_that_cannot_be_converted_fails_the_build():
    hook = load_mathml_hook()
    assert "<msub>" in hook.to_mathml(r"\big\lVert x_1 \big\rVert", display=False)
    assert "<mo>arg</mo>" in hook.to_mathml(r"\arg\min_x f", display=True)
    with pytest.raises(ValueError, match=r"\\nosuchcommand"):
        hook.render_math(r'<span class="arithmatex">\(\nosuchcommand x\)</span>')


@pytest.mark.slow
def test_the_built_site_loads_nothing_from_another_host(tmp_path):
    """Build the site as `make docs` does, then read every page and asset it wrote."""
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    found = {
        path.relative_to(site).as_posix(): hits
        for path in site.rglob("*")
        if path.suffix in {".html", ".js", ".css"}
        and (hits := external_in_text(path.read_text(errors="replace")))
    }
    assert found == {}
    for name in ("flows", "vae", "score"):
        page = (site / "families" / name / "index.html").read_text()
        assert page.count("<math ") > 5 and "\\(" not in page, name
