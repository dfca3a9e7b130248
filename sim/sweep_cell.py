"""One run of a sweep: a cell of the grid and a seed, every controller, as ``python -m sim`` runs them.

What a worker of either backend of ``python -m sim sweep`` (:mod:`sim.sweep`) executes: the local
pool's processes and Ray's tasks (:mod:`sim.sweep_ray`) call the same :func:`run_cell`, so the files
cannot depend on the backend. A worker that does not share the driver's disk (a Ray cluster's node)
runs in a scratch folder and hands the files back packed (:func:`pack_folder`, :func:`unpack_folder`).
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from sim.model.entries import Plan
from sim.runner import run_plan

__all__ = ["pack_folder", "run_cell", "unpack_folder"]


def run_cell(plan: Plan, ship: bool = False) -> dict[str, Any]:
    """Every entry of one cell and seed, as ``python -m sim`` runs them, into ``plan.out``; returns
    ``{"summary": summary.json's content, "files": None}``. ``ship``: run in a scratch folder on this
    machine and return its files packed (a worker of a cluster does not see the driver's disk)."""
    if not ship:
        summary, _ = run_plan(plan, jobs=1, show_progress=False)
        return {"summary": summary, "files": None}
    with tempfile.TemporaryDirectory(prefix="tokenpace-sweep-") as tmp:
        local = replace(plan, out=Path(tmp) / "run")
        summary, _ = run_plan(local, jobs=1, show_progress=False)
        return {"summary": summary, "files": pack_folder(local.out)}


def pack_folder(folder: Path) -> bytes:
    """``folder``'s files as an uncompressed tar, names relative to it, in sorted order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=str(p.relative_to(folder)), recursive=False)
    return buf.getvalue()


def unpack_folder(data: bytes, folder: Path) -> None:
    """What :func:`pack_folder` packed, into ``folder`` (replaced whole: written beside it, then renamed)."""
    part = folder.with_name(folder.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: no links or paths out of the folder
            tar.extractall(part, filter="data")
        else:
            tar.extractall(part)  # our own pack_folder bytes
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(part, folder)
