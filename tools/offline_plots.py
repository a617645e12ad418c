"""`python -m tools.offline_plots`: rebuild `.dvc/plots/offline.html`, the page that
`dvc plots show` and `dvc plots diff` fill (DVC's `plots.html_template`, set in
`.dvc/config`), with Vega, Vega-Lite and Vega-Embed inlined.

DVC's own page loads those three from a CDN, so with no internet it is blank. This one
loads nothing from the network. The versions are the ones DVC's renderer (dvc-render)
asks the CDN for; each npm tarball is checked against its registry integrity hash, and
each package's licence (BSD-3-Clause) is kept beside its code, as the licence asks.
Needs the npm registry once, when the template is rebuilt; never at run or test time.
"""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import urllib.request
from pathlib import Path

from stages.lib.infra.files import write_text

TEMPLATE = Path(".dvc/plots/offline.html")
REGISTRY = "https://registry.npmjs.org"
# name: (version, built file in the tarball, the registry's dist.integrity)
PACKAGES = {
    "vega": ("5.20.2", "build/vega.min.js",
             "sha512-qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw=="),
    "vega-lite": ("5.2.0", "build/vega-lite.min.js",
                  "sha512-Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw=="),
    "vega-embed": ("6.18.2", "build/vega-embed.min.js",
                   "sha512-wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg=="),
}
# dvc-render fills {plot_divs} and {refresh_tag}; leaving out {scripts} is what keeps its
# CDN <script src=...> tags off the page.
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC plots</title>
    <!-- Built by `python -m tools.offline_plots`: {summary}, inlined from npm so that
         this page loads nothing from the network. -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def fetch_package(name: str, version: str, integrity: str) -> tarfile.TarFile:
    url = f"{REGISTRY}/{name}/-/{name}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read()
    algorithm, expected = integrity.split("-", 1)
    if base64.b64encode(hashlib.new(algorithm, data).digest()).decode() != expected:
        raise SystemExit(f"{url}: integrity check failed (expected {integrity})")
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")


def script_block(name: str, version: str, built: str, integrity: str) -> str:
    with fetch_package(name, version, integrity) as tar:
        code = tar.extractfile(f"package/{built}").read().decode()
        licence = tar.extractfile("package/LICENSE").read().decode()
    if "</script" in code.lower() or "--" in licence:
        raise SystemExit(f"{name} {version}: cannot be inlined as it is")
    return (f"    <!-- {name} {version} ({built}), under this licence:\n{licence.strip()}\n"
            f"    -->\n    <script>\n{code.strip()}\n    </script>")


def main() -> None:
    blocks = [script_block(name, *spec) for name, spec in PACKAGES.items()]
    summary = ", ".join(f"{name} {version}" for name, (version, *_) in PACKAGES.items())
    TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
    write_text(TEMPLATE, PAGE.format(summary=summary, scripts="\n".join(blocks)))
    print(f"{TEMPLATE}: {TEMPLATE.stat().st_size / 1e6:.2f} MB ({summary})")


if __name__ == "__main__":
    main()
