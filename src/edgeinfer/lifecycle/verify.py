"""Checks a loaded version must pass before it may take traffic: golden inputs and the
quantization report's accuracy gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgeinfer.errors import EdgeInferError, LoadError
from edgeinfer.runtime import Model

GOLDEN_DIR = "golden"
REPORT_NAME = "report.json"


class VerifyError(LoadError):
    """A version loaded but failed verification; `reason` labels the metric."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_report(version_dir: Path) -> None:
    """Refuse a version whose optimizer report says its accuracy gate rejected it."""
    path = version_dir / REPORT_NAME
    if not path.is_file():
        return
    try:
        report = json.loads(path.read_text())
    except ValueError as e:
        raise VerifyError(f"{path}: unreadable report: {e}", "rejected") from e
    if isinstance(report, dict) and report.get("status") == "rejected":
        why = report.get("gate", {}).get("reason", "accuracy gate failed")
        raise VerifyError(
            f"{version_dir.name}: the optimizer rejected this version: {why}", "rejected"
        )


def golden_cases(version_dir: Path) -> list[tuple[str, Path, Path]]:
    folder = version_dir / GOLDEN_DIR
    if not folder.is_dir():
        return []
    cases = []
    for inp in sorted(folder.glob("*.input.npz")):
        case = inp.name[: -len(".input.npz")]
        out = folder / f"{case}.output.npz"
        if not out.is_file():
            raise VerifyError(f"golden case {case}: {out.name} is missing", "golden")
        cases.append((case, inp, out))
    return cases


def check_golden(model: Model, version_dir: Path, rtol: float, atol: float) -> int:
    """Run every golden case; raise VerifyError on the first mismatch. Returns cases checked."""
    cases = golden_cases(version_dir)
    for case, inp, out in cases:
        with np.load(inp, allow_pickle=False) as f:
            feeds = {k: f[k] for k in f.files}
        with np.load(out, allow_pickle=False) as f:
            expected = {k: f[k] for k in f.files}
        try:
            got = model.run(feeds, list(expected))
        except EdgeInferError as e:
            raise VerifyError(f"golden case {case}: run failed: {e.message}", "golden") from e
        for name, want in expected.items():
            have = got[name]
            if have.shape != want.shape or not np.allclose(have, want, rtol=rtol, atol=atol):
                diff = (
                    float(np.max(np.abs(have.astype(np.float64) - want)))
                    if have.shape == want.shape
                    else float("nan")
                )
                raise VerifyError(
                    f"golden case {case}: output '{name}' differs from the expected "
                    f"(max abs diff {diff:.3g}, rtol {rtol}, atol {atol})",
                    "golden",
                )
    return len(cases)
