"""Take single files out of a PyPI release archive (sdist or wheel) without building it.

``pip download`` of an sdist runs the project's setup.py to learn its build requirements, and
the OpenMMLab setup scripts import torch there, so it fails in a fresh environment. This
script reads PyPI's simple index (JSON, PEP 691), downloads the archive, checks its sha256
against the index and extracts the named members::

    python scripts/fetch_release_file.py mmdet 2.28.2 sdist DEST mmdet/core/optimizers/x.py

Members are relative to the archive root without the sdist's ``NAME-VERSION/`` prefix; they
land in ``DEST/NAME-VERSION/MEMBER``. Any failure (network, hash, missing member) exits non-zero.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

INDEX = os.environ.get("FASTOPT_PYPI_SIMPLE", "https://pypi.org/simple")


def release_file(project: str, version: str, kind: str) -> tuple[str, str, str]:
    """``(filename, url, sha256)`` of the release's sdist or pure-Python wheel."""
    request = urllib.request.Request(f"{INDEX}/{project}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    stem = project.replace("-", "_") if kind == "wheel" else project
    for entry in files:
        name = entry["filename"]
        wanted = (name.startswith(f"{stem}-{version}-") and name.endswith(".whl") if kind == "wheel"
                  else name in (f"{project}-{version}.tar.gz", f"{stem.replace('-', '_')}-{version}.tar.gz"))
        if wanted:
            return name, entry["url"], entry["hashes"]["sha256"]
    raise SystemExit(f"{project}=={version}: no {kind} in {INDEX}/{project}/")


def main() -> None:
    """Fetch the archive, verify it, extract the members."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project")
    parser.add_argument("version")
    parser.add_argument("kind", choices=["sdist", "wheel"])
    parser.add_argument("dest", type=Path)
    parser.add_argument("members", nargs="+")
    args = parser.parse_args()

    filename, url, sha256 = release_file(args.project, args.version, args.kind)
    with urllib.request.urlopen(url, timeout=300) as response:
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise SystemExit(f"{filename}: sha256 {digest} does not match the index ({sha256})")
    root = args.dest / f"{args.project}-{args.version}"
    for member in args.members:
        target = root / member
        target.parent.mkdir(parents=True, exist_ok=True)
        if args.kind == "wheel":
            content = zipfile.ZipFile(io.BytesIO(data)).read(member)
        else:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                prefix = tar.getnames()[0].split("/")[0]
                handle = tar.extractfile(f"{prefix}/{member}")
                if handle is None:
                    raise SystemExit(f"{filename}: {member} is not a file")
                content = handle.read()
        target.write_bytes(content)
        print(f"{filename}: {member}", file=sys.stderr)


if __name__ == "__main__":
    main()
