"""`make sdk`: generate client SDKs from swagger/swagger.yaml.

  python scripts/sdk.py [OUT]      (default build/sdk)

OUT/python             openapi-generator, `python` generator, package `store_api_client`
OUT/typescript         openapi-generator, `typescript-fetch` generator
OUT/store_api_pyclient openapi-python-client (package `store_api_pyclient`)

Both generators come from PyPI (requirements-dev.txt); openapi-generator needs Java 11+.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "swagger" / "swagger.yaml"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if not path:
        raise SystemExit(f"{name} not found: install requirements-dev.txt (make test does)")
    return path


def _run(args: list[str], log: Path) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # ruff, for the formatter
    with log.open("w") as out:
        done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        raise SystemExit(f"{' '.join(args[:3])} failed; see {log}")


def generate(out: Path, which: tuple[str, ...] = ("python", "typescript", "pyclient")) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    made = {}
    if "python" in which:
        target = out / "python"
        shutil.rmtree(target, ignore_errors=True)
        _run(
            [
                _tool("openapi-generator-cli"),
                "generate",
                "-i",
                str(SPEC),
                "-g",
                "python",
                "-o",
                str(target),
                "--package-name",
                "store_api_client",
            ],
            out / "python.log",
        )
        made["python"] = target
    if "typescript" in which:
        target = out / "typescript"
        shutil.rmtree(target, ignore_errors=True)
        _run(
            [
                _tool("openapi-generator-cli"),
                "generate",
                "-i",
                str(SPEC),
                "-g",
                "typescript-fetch",
                "-o",
                str(target),
                "--additional-properties=npmName=store-api-client,supportsES6=true",
            ],
            out / "typescript.log",
        )
        made["typescript"] = target
    if "pyclient" in which:
        target = out / "store_api_pyclient"
        shutil.rmtree(target, ignore_errors=True)
        _run(
            [
                _tool("openapi-python-client"),
                "generate",
                "--path",
                str(SPEC),
                "--output-path",
                str(target),
                "--meta",
                "none",
            ],
            out / "pyclient.log",
        )
        made["pyclient"] = target
    return made


if __name__ == "__main__":
    destination = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "sdk"
    for name, path in generate(destination).items():
        print(f"{name:<11} {path}")
