"""Carry out the install plan written by `jetqueue render`: `helm upgrade --install`, in order."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def commands(plan: dict[str, Any], out: Path) -> list[list[str]]:
    cmds: list[list[str]] = []
    repos = {r["repo"]: r["chart"].split("/")[0] for r in plan["releases"] if r.get("repo")}
    for url, name in sorted(repos.items()):
        cmds.append(["helm", "repo", "add", "--force-update", name, url])
    if repos:
        cmds.append(["helm", "repo", "update"])
    for path in plan.get("manifests", []):
        cmds.append(["kubectl", "apply", "-f", str(out / path)])
    for r in plan["releases"]:
        chart = r["chart"] if r.get("repo") else str(ROOT / r["chart"])
        cmd = [
            "helm",
            "upgrade",
            "--install",
            r["name"],
            chart,
            "--namespace",
            r["namespace"],
            "--create-namespace",
        ]
        if r.get("version"):
            cmd += ["--version", r["version"]]
        cmd += ["--values", str(out / r["values"]), "--wait"]
        cmds.append(cmd)
    return cmds


def _missing_prerequisites(need_kubectl: bool) -> list[str]:
    missing = []
    if not shutil.which("helm"):
        missing.append("helm is not on PATH (https://helm.sh/docs/intro/install/)")
    if need_kubectl and not shutil.which("kubectl"):
        missing.append("kubectl is not on PATH (needed for the NACK manifests)")
    kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if not any(Path(p).is_file() for p in kubeconfig.split(os.pathsep) if p):
        missing.append(
            f"no kube context: {kubeconfig} does not exist (set KUBECONFIG or run `kubectl config use-context`)"
        )
    return missing


def run(plan_path: Path, dry_run: bool) -> int:
    if not plan_path.is_file():
        print(f"error: {plan_path} not found: run `make render` (or `jetqueue render`) first")
        return 1
    plan = json.loads(plan_path.read_text(encoding="utf-8"))
    cmds = commands(plan, plan_path.parent)
    if dry_run:
        for c in cmds:
            print(" ".join(c))
        return 0
    missing = _missing_prerequisites(bool(plan.get("manifests")))
    if missing:
        for m in missing:
            print(f"error: {m}")
        print("nothing was installed; `jetqueue install --dry-run` prints the commands")
        return 1
    for i, c in enumerate(cmds, 1):
        print(f"[{i}/{len(cmds)}] {' '.join(c)}", flush=True)
        done = subprocess.run(c, check=False)
        if done.returncode:
            print(f"error: step {i} failed with exit code {done.returncode}; later steps were not run")
            return 1
    return 0
