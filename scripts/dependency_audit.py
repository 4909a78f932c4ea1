"""CI step: audit the pinned dependencies (constraints.txt) for known vulnerabilities.

Runs pip-audit against the PyPI advisory database. Fails (exit 1) on any advisory that is not in
IGNORED below. When the advisory service cannot be used from this machine (offline, a registry
mirror without the vulnerability API: every package comes back "not found"), the step says so
and is skipped (exit 0) rather than passing as if audited or failing the build for the network.

IGNORED: advisory id → why it cannot be fixed now and when to look again. Keep it short and
reviewed; docs/security.md explains the policy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIP_AUDIT = ROOT / ".venv" / "bin" / "pip-audit"
TIMEOUT_SECONDS = 300

IGNORED: dict[str, str] = {}


def main() -> int:
    command = [
        str(PIP_AUDIT),
        "--requirement",
        str(ROOT / "constraints.txt"),
        "--no-deps",  # constraints.txt pins the whole environment already
        "--disable-pip",
        "--progress-spinner",
        "off",
        "--format",
        "json",
    ]
    for advisory in IGNORED:
        command += ["--ignore-vuln", advisory]
    try:
        result = subprocess.run(  # noqa: S603 - fixed command, no shell
            command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        print("pip-audit: SKIPPED - the advisory service did not answer in time.")
        return 0
    try:
        report = json.loads(result.stdout)
    except ValueError:
        print("pip-audit: SKIPPED - the advisory service is unreachable from this machine:")
        print("\n".join(result.stderr.strip().splitlines()[-3:]))
        return 0
    dependencies = report.get("dependencies", [])
    audited = [d for d in dependencies if "skip_reason" not in d]
    if not audited:
        print(
            f"pip-audit: SKIPPED - none of {len(dependencies)} pinned packages could be audited "
            "(the package index here offers no vulnerability data); run it where PyPI is "
            "reachable."
        )
        return 0
    findings = [
        f"{d['name']} {d['version']}: {v['id']} (fix: {', '.join(v['fix_versions']) or 'none'})"
        for d in audited
        for v in d.get("vulns", [])
        if v["id"] not in IGNORED
    ]
    skipped = len(dependencies) - len(audited)
    if findings:
        print("pip-audit: vulnerable dependencies:\n  " + "\n  ".join(findings))
        return 1
    print(
        f"pip-audit: {len(audited)} packages audited, no known vulnerabilities ({skipped} skipped)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
