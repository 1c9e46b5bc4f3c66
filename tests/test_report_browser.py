"""The report in headless Chromium (Debian's package): every image loads, no request leaves the machine.

A screenshot is kept in test-artifacts/report.png. Uses the tiny study of test_workflow.
"""

import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EXPONENT = re.compile(r"\d[eE][+-]?\d")  # 1.42e+04

PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.title = `images ${ok}/${imgs.length}`;
});
</script></body>"""


class RecordingProxy:
    """A proxy that records the host of every request and answers none: Chromium sends all traffic through it."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.server.settimeout(0.2)
        self.port, self.hosts, self.stop = self.server.getsockname()[1], [], False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop:
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            conn.settimeout(1)
            try:
                line = conn.recv(4096).split(b"\r\n")[0]
            except OSError:  # a connection opened ahead (preconnect) that sent no request within the timeout
                line = b""
            if line:
                try:
                    target = line.split(b" ")[1].decode()
                    self.hosts.append(urlsplit(target if "//" in target else f"//{target}").hostname)
                except (IndexError, UnicodeDecodeError):  # a request the proxy cannot read still counts
                    self.hosts.append("?")
            conn.close()

    def close(self):
        self.stop = True
        self.thread.join(2)
        self.server.close()


def chromium(args, tmp_path, proxy_port):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", f"--user-data-dir={tmp_path / 'profile'}",
             f"--proxy-server=http://127.0.0.1:{proxy_port}", "--proxy-bypass-list=<-loopback>",
             "--virtual-time-budget=5000"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_offline_with_every_image(study, tmp_path):
    page = (study / "results/report.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE))
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body></body></html>")
    proxy = RecordingProxy()
    try:
        chromium(["--dump-dom", blank.as_uri()], tmp_path, proxy.port)
        browser_own = set(proxy.hosts)  # the browser's own background requests, made for any page
        proxy.hosts.clear()
        dom = chromium(["--dump-dom", probe.as_uri()], tmp_path, proxy.port)
        artifacts = ROOT / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        shot = chromium([f"--screenshot={artifacts / 'report.png'}", "--window-size=1400,2400",
                         (study / "results/report.html").as_uri()], tmp_path, proxy.port)
    finally:
        proxy.close()
    n_images = page.count("<img ")
    assert n_images == 13
    assert f"<title>images {n_images}/{n_images}</title>" in dom.stdout, dom.stdout[:300] + dom.stderr[-2000:]
    assert set(proxy.hosts) <= browser_own, f"the report made requests to {set(proxy.hosts) - browser_own}"
    assert shot.returncode == 0 and Path(artifacts / "report.png").stat().st_size > 20_000
    cells = re.findall(r"<t[dh][^>]*>([^<]*)</t[dh]>", dom.stdout)
    assert len(cells) > 200
    unreadable = [c for c in cells if c.strip() in ("nan", "NaN", "None", "<NA>", "inf") or EXPONENT.search(c)]
    assert not unreadable, f"cells a reader cannot take in at a glance: {unreadable[:10]}"
