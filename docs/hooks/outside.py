"""mkdocs hook: pages and pictures that live outside docs/ (each kept in one place) enter the site as they are.

SECURITY.md stays where GitHub looks for it, bench/results.md and its plot where `make bench` writes them, the chart
READMEs beside their charts; the site shows each under the path given here. A link written between repository files
(`../schemas/message-contract.md` in docs/cron.md, which GitHub follows) is pointed at the file's place in the site.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parent.parent.parent

# site path -> file in the repository
OUTSIDE = {
    "security.md": "SECURITY.md",
    "benchmarks/results.md": "bench/results.md",
    "benchmarks/throughput.png": "bench/throughput.png",
    "reference/message-contract.md": "schemas/message-contract.md",
    "reference/charts/queue-worker.md": "charts/queue-worker/README.md",
    "reference/charts/gateway.md": "charts/gateway/README.md",
    "reference/charts/jetqueue-lib.md": "charts/jetqueue-lib/README.md",
}


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for site_path, repo_path in OUTSIDE.items():
        source = ROOT / repo_path
        if not source.is_file():
            raise FileNotFoundError(f"docs/hooks/outside.py: {repo_path} is missing (shown as {site_path})")
        files.append(File.generated(config, site_path, abs_src_path=str(source)))
    return files


_LINK = re.compile(r"\]\((?!https?:|#)([^)\s#]+)(#[^)\s]*)?\)")
_SITE_OF = {repo: site for site, repo in OUTSIDE.items()}


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Links to a repository file shown in the site go to its site path (a page under docs/ linked from a file
    outside it too); any other link is left to mkdocs, which fails the strict build on one it cannot find."""
    source = Path(page.file.abs_src_path or "")
    if not source.is_relative_to(ROOT):
        return markdown
    here = source.parent.relative_to(ROOT).as_posix()

    def repoint(m: re.Match[str]) -> str:
        target = posixpath.normpath(posixpath.join(here, m.group(1)))
        site = _SITE_OF.get(target) or (target[5:] if target.startswith("docs/") else None)
        if site is None:
            return m.group(0)
        rel = posixpath.relpath(site, posixpath.dirname(page.file.src_uri) or ".")
        return f"]({rel}{m.group(2) or ''})"

    return _LINK.sub(repoint, markdown)
