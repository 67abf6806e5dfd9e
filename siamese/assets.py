"""Where the web app's page and assets (views/, static/) are, in a checkout and when installed.

They live in two places because the project is used in two ways:

- from a checkout (``python app.py``, or ``pip install -e .``): views/ and static/ are the repository's
  own directories, next to the siamese package, so an edit to them shows on the next reload;
- installed (``pip install .``): a wheel holds Python modules, not the repository's top-level
  directories, so pyproject.toml installs them as data files under ``<prefix>/share/siamese/``
  (``[tool.setuptools.data-files]``), and the package directory's parent is then site-packages.

asset_dir looks in the checkout first, then under the installation prefix.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

# The directory holding the siamese package: the repository root in a checkout or editable install,
# site-packages when installed.
_PACKAGE_PARENT = Path(__file__).resolve().parent.parent


def _installed_candidates(name: str) -> list[Path]:
    """<prefix>/share/siamese/<name> for sys.prefix first (a venv, the usual case), then the other
    places pip may have put data files: the scheme's data path (e.g. /usr/local for a system pip on
    Debian) and the user scheme (pip install --user)."""
    prefixes = [Path(sys.prefix)]
    for scheme in (None, sysconfig.get_preferred_scheme("user")):
        try:
            data = sysconfig.get_path("data") if scheme is None else sysconfig.get_path("data", scheme)
        except KeyError:
            continue
        if data:
            prefixes.append(Path(data))
    candidates: list[Path] = []
    for prefix in prefixes:
        candidate = prefix / "share" / "siamese" / name
        if candidate not in candidates:
            candidates.append(candidate)
    return candidates


def asset_dir(name: str) -> Path:
    """The directory of the web app's `name` assets ("views" or "static").

    The checkout's <repository root>/<name> when siamese is imported from a checkout (recognised by
    its pyproject.toml: site-packages has none, so a stray site-packages/static of another
    distribution is not taken for ours), else <sys.prefix>/share/siamese/<name> as installed by
    `pip install .`. Raises FileNotFoundError, naming every place looked in, if neither exists.
    """
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"asset directory name must be a single path component, not {name!r}")
    checkout = _PACKAGE_PARENT / name
    if (_PACKAGE_PARENT / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    installed = _installed_candidates(name)
    for candidate in installed:
        if candidate.is_dir():
            return candidate
    looked = ", ".join(str(path) for path in [checkout, *installed])
    raise FileNotFoundError(
        f"the web app's {name}/ directory was not found (looked in: {looked}); run from a checkout, "
        f"or install the project with `pip install .` so that it is installed under share/siamese/")
