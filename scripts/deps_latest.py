"""`make deps-latest`, the upgrade canary: the suite on the newest releases the pins' major versions
allow of the frameworks swagger_server/patches.py relies on (Connexion, Flask, Starlette, uvicorn,
uvicorn-worker, gunicorn), in a scratch venv (.venv-latest), everything else as pinned.

It prints each framework's pinned and installed version, then runs the whole suite there. A failure
names the patch or override to revisit (tests/project/test_patches.py checks the names they rely on first).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-latest"
# requirement name in requirements.txt -> what to install (with extras)
FRAMEWORKS = {
    "connexion": "connexion[flask,swagger-ui,uvicorn]",
    "flask": "flask",
    "starlette": "starlette",
    "uvicorn": "uvicorn[standard]",
    "uvicorn-worker": "uvicorn-worker",
    "gunicorn": "gunicorn",
}


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;#]+)", line)
        if match and match.group(1).lower() in FRAMEWORKS:
            found[match.group(1).lower()] = match.group(3)
    return found


def allowed(version: str) -> str:
    """The range a pin allows: the same major version (for 0.x, any 0.x)."""
    major = int(version.split(".")[0])
    return f">={version},<{major + 1}"


def run(*args, **kwargs) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True, **kwargs)


def main() -> int:
    python = VENV / "bin" / "python"
    if not python.exists():
        run(sys.executable, "-m", "venv", VENV)
    run(python, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(python, "-m", "pip", "install", "--quiet", "-r", ROOT / "requirements-dev.txt")
    pinned = pins()
    specs = [f"{FRAMEWORKS[name]}{allowed(version)}" for name, version in pinned.items()]
    run(python, "-m", "pip", "install", "--quiet", "--upgrade", *specs)
    installed = subprocess.run(
        [python, "-c", "import importlib.metadata as m, sys; [print(n, m.version(n)) for n in sys.argv[1:]]", *pinned],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    versions = dict(zip(installed[::2], installed[1::2], strict=True))
    print("\nframework        pinned     newest allowed (installed)")
    for name, version in pinned.items():
        mark = "" if versions[name] == version else "   <- newer than the pin"
        print(f"{name:<16} {version:<10} {versions[name]}{mark}")
    print(flush=True)
    for marker in (".installed-local", ".installed-dev"):  # so that make lint / make run use this venv
        (VENV / marker).touch()
    env = {**os.environ, "VENV": str(VENV.relative_to(ROOT))}
    done = subprocess.run([python, "-m", "pytest", *sys.argv[1:]], cwd=ROOT, env=env)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
