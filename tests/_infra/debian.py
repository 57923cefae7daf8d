"""Debian tools some tests drive for real: headless Chromium (`chromium`) and poppler-utils
(`pdftotext`, `pdfinfo`, `pdftoppm`). A missing one is installed with apt-get when we are root;
otherwise, or when that fails, the test is skipped, and fails instead under CI=true."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = ["CHROMIUM_ARGS", "chromium", "poppler", "debian_tool", "unavailable"]

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
POPPLER = ("pdftotext", "pdfinfo", "pdftoppm")
# several test sessions may share the machine: wait for another apt-get instead of failing
_APT = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-qq"]


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _which(binary: str) -> str | None:
    return shutil.which(binary) or (f"/usr/bin/{binary}" if Path(f"/usr/bin/{binary}").exists() else None)


def debian_tool(binary: str, package: str) -> str:
    """The path of `binary`, from Debian's `package`, installed with apt-get when missing."""
    found = _which(binary)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        unavailable(f"{binary} is not installed and apt-get cannot run here (not root): apt-get install {package}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*_APT, "install", "-y", package]
    proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:  # no or stale package lists: fetch them, then try again
        for cmd in ([*_APT, "update"], install):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
            if proc.returncode != 0:
                unavailable(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
    return _which(binary) or unavailable(f"apt-get installed {package} but {binary} is not on PATH")


def chromium() -> str:
    """Debian's headless-capable Chromium."""
    return debian_tool("chromium", "chromium")


def poppler() -> dict[str, str]:
    """pdftotext, pdfinfo and pdftoppm by name."""
    return {binary: debian_tool(binary, "poppler-utils") for binary in POPPLER}
