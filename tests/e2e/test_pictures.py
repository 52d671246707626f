"""The pictures, seen as a person sees them: the committed summary.md and the `dvc plots show`
page open in headless Chromium (Debian's `chromium`; `make test` installs it) with no network.
Chromium's own network log is the witness that the page sent no request off the machine."""

import html
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = pytest.mark.skipif(
    not CHROMIUM, reason="chromium not installed (make test installs it: apt-get install chromium)"
)

# Runs once the page has loaded and vega has had time to draw; writes what it saw into the DOM.
PROBE = """<script>
addEventListener("load", () => setTimeout(() => {
  const images = [...document.images].map(i => [i.getAttribute("src"), i.naturalWidth, i.naturalHeight]);
  const plots = [...document.querySelectorAll(".vega-embed")].map(e => e.querySelectorAll("svg.marks, canvas.marks").length);
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({images, plots});
  document.body.appendChild(out);
}, 3000));
</script>"""


def open_in_chromium(page: Path, tmp_path: Path) -> tuple[dict, list[str]]:
    """What the probe saw, and every URL the page asked Chromium's network stack for."""
    netlog = tmp_path / f"{page.stem}.netlog.json"
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            # a request that tried to leave fails at once instead of waiting on the network, and is still logged
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--log-net-log={netlog}",
            "--virtual-time-budget=20000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert seen, f"the page did not finish loading: {proc.stdout[-500:]}"
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    # Chromium's own housekeeping (update and account checks) starts with no initiator ("not an
    # origin"); what the page asks for carries the page's origin ("null" for a file:// page).
    urls = sorted(
        {
            e["params"]["url"]
            for e in log["events"]
            if e["type"] == start and e["params"].get("initiator", "not an origin") != "not an origin"
        }
    )
    return json.loads(html.unescape(seen.group(1))), urls


def leaving(urls: list[str]) -> list[str]:
    return [u for u in urls if u.split(":", 1)[0] in ("http", "https", "ws", "wss")]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk: a second reading of what the browser decoded."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


def test_the_network_log_sees_a_page_that_reaches_out(tmp_path):
    """The witness works: an image from the web shows up in the log, and does not load."""
    page = tmp_path / "remote.html"
    page.write_text(f'<html><body><img src="https://cdn.example.org/x.png">{PROBE}</body></html>')
    seen, urls = open_in_chromium(page, tmp_path)
    assert leaving(urls) == ["https://cdn.example.org/x.png"]
    assert seen["images"] == [["https://cdn.example.org/x.png", 0, 0]]


def test_summary_md_shows_every_picture_offline(tmp_path):
    from markdown_it import MarkdownIt

    summary = REPO / "reports" / "summary.md"
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", summary.read_text())
    assert linked and all((summary.parent / src).is_file() for src in linked)
    body = MarkdownIt("commonmark").enable("table").render(summary.read_text())
    page = tmp_path / "summary.html"
    # <base>: the summary's relative links resolve where they do on GitHub, beside summary.md
    page.write_text(
        f'<html><head><meta charset="utf-8"><base href="{summary.parent.as_uri()}/"></head>'
        f"<body>{body}{PROBE}</body></html>"
    )
    seen, urls = open_in_chromium(page, tmp_path)
    assert leaving(urls) == []
    assert [src for src, _, _ in seen["images"]] == linked
    for src, width, height in seen["images"]:
        assert (width, height) == png_size(summary.parent / src), src


def test_dvc_plots_page_draws_every_plot_offline(tmp_path):
    template = REPO / "build" / "plots" / "template.html"
    assert template.is_file(), "make setup writes it (scripts/plots_template.sh)"
    out = tmp_path / "plots"
    proc = subprocess.run(
        ["dvc", "plots", "show", "--html-template", str(template), "-o", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    index = out / "index.html"
    text = index.read_text()
    assert "cdn.jsdelivr" not in text
    head, _, tail = text.rpartition("</body>")  # the last one: vega's own code holds the string too
    index.write_text(head + PROBE + "</body>" + tail)
    seen, urls = open_in_chromium(index, tmp_path)
    assert leaving(urls) == []
    # every plot DVC wrote is drawn, exactly once
    assert len(seen["plots"]) == text.count("vegaEmbed(") > 0
    assert seen["plots"] == [1] * len(seen["plots"])


def test_setup_points_this_checkouts_dvc_at_the_offline_template():
    proc = subprocess.run(["dvc", "config", "plots.html_template"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (REPO / ".dvc" / proc.stdout.strip()).resolve() == (REPO / "build" / "plots" / "template.html").resolve()
