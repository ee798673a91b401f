"""The install is the tested one: the lock satisfies every range it was made from, pins every package with hashes,
names no machine's paths, and the README's commands and CI install from it (issue 20)."""
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _locked(name: str) -> dict[str, Version]:
    text = (ROOT / name).read_text()
    return {re.sub(r"[-_.]+", "-", n).lower(): Version(v)
            for n, v in re.findall(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(\S+) \\$", text, re.M)}


def _ranges(name: str) -> list[Requirement]:
    out = []
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            out.append(Requirement(line))
    return out


def test_each_lock_satisfies_the_ranges_it_was_made_from():
    """A range edited in requirements.txt without `tools/lock` shows here."""
    for lock, sources in (("requirements.lock", ["requirements.txt"]),
                          ("requirements-dev.lock", ["requirements.txt", "requirements-dev.in"])):
        locked = _locked(lock)
        for src in sources:
            for req in _ranges(src):
                name = re.sub(r"[-_.]+", "-", req.name).lower()
                assert name in locked, f"{req.name} ({src}) is not in {lock}: run tools/lock"
                assert req.specifier.contains(locked[name], prereleases=True), \
                    f"{lock} has {req.name}=={locked[name]}, outside {src}'s '{req.specifier}': run tools/lock"


def test_the_dev_lock_adds_test_tools_to_the_same_versions():
    run, dev = _locked("requirements.lock"), _locked("requirements-dev.lock")
    assert {k: v for k, v in dev.items() if k in run} == run
    assert {"pytest", "pytest-timeout", "playwright"} <= set(dev) - set(run)


def test_every_locked_package_has_a_hash_and_no_machine_path():
    for lock in ("requirements.lock", "requirements-dev.lock"):
        text = (ROOT / lock).read_text()
        blocks = re.findall(r"^([A-Za-z0-9_.\-\[\],]+==\S+)((?: \\\n\s+--hash=sha256:[0-9a-f]{64})+)", text, re.M)
        assert len(blocks) == len(re.findall(r"^[A-Za-z0-9_.\-\[\],]+==", text, re.M)) > 100
        assert not re.search(r"file://|--find-links|--index-url|--extra-index-url", text)


def test_readme_and_ci_install_from_the_lock():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = ("python3 -m venv .venv && .venv/bin/pip install -q -r requirements-dev.lock && "
                    ".venv/bin/python -m pytest -q")
    assert test_command in readme and test_command in ci
    assert "pip install -r requirements.lock && .venv/bin/python app.py" in readme
    assert "requirements.lock" in (ROOT / "Dockerfile").read_text()
