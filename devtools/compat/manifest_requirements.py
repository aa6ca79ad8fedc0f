"""Print the pip requirements of Home Assistant components and their dependencies.

Usage: ``python manifest_requirements.py SITE_PACKAGES COMPONENT...``

The probe installs Home Assistant without its component requirements; the end-to-end
tests start a real ``hass --skip-pip`` that loads the frontend, recorder, prometheus
and MQTT, and the MQTT config flow imports the supervisor client. Their pins come from
the installed Home Assistant's manifests, so they match the version under test.
"""

from __future__ import annotations

import json
from pathlib import Path
import sys


def requirements(components_dir: Path, roots: list[str]) -> list[str]:
    """Return the requirements of ``roots`` and of what they depend on."""
    seen: set[str] = set()
    pending = list(roots)
    found: dict[str, None] = {}
    while pending:
        domain = pending.pop()
        if domain in seen:
            continue
        seen.add(domain)
        manifest_path = components_dir / domain / "manifest.json"
        if not manifest_path.exists():
            continue
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        found.update(dict.fromkeys(manifest.get("requirements", [])))
        pending.extend(manifest.get("dependencies", []))
    return list(found)


if __name__ == "__main__":
    site = Path(sys.argv[1])
    print("\n".join(requirements(site / "homeassistant/components", sys.argv[2:])))
