"""app.py without launching: flags and environment, and the composed Blocks (every event named once)."""
import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest

import app


def test_defaults_bind_loopback_on_7860(monkeypatch):
    for k in ("MOE_STUDIO_HOST", "MOE_STUDIO_PORT", "MOE_STUDIO_AUTH", "MOE_STUDIO_MAX_UPLOAD"):
        monkeypatch.delenv(k, raising=False)
    args = app.parse_args([])
    assert (args.host, args.port, args.auth, args.max_upload) == ("127.0.0.1", 7860, None, "20gb")


def test_environment_and_flags(monkeypatch):
    monkeypatch.setenv("MOE_STUDIO_AUTH", "alice:s3cret")
    monkeypatch.setenv("MOE_STUDIO_PORT", "9000")
    args = app.parse_args(["--host", "0.0.0.0", "--redis-url", "redis://h:6379/0"])
    assert (args.host, args.port, args.redis_url) == ("0.0.0.0", 9000, "redis://h:6379/0")
    assert app.parse_auth(args.auth) == [("alice", "s3cret")]
    assert app.parse_auth("a:1, b:2:3") == [("a", "1"), ("b", "2:3")]
    assert app.parse_auth("") is None
    with pytest.raises(SystemExit, match="user:password"):
        app.parse_auth("alice")


def test_model_roots_flag_is_repeatable_and_checked(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    args = app.parse_args(["--model-root", str(tmp_path / "a"), "--model-root", str(tmp_path / "b")])
    assert app.model_roots_env(args.model_root) == os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="--model-root .*no such folder"):
        app.model_roots_env([str(tmp_path / "missing")])
    assert app.parse_args([]).model_root is None


@pytest.mark.parametrize("url, shown", [
    ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
    ("rediss://alice:s3:cr@t@h:6380/1", "rediss://alice:***@h:6380/1"),
    ("postgresql+psycopg://u:p%40ss@db.example:5432/studio", "postgresql+psycopg://u:***@db.example:5432/studio"),
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("redis://user@h/0", "redis://user@h/0"),
    ("sqlite:///studio-data/studio.db", "sqlite:///studio-data/studio.db"),
    ("redis://u:p@[::1", "<unparsable URL>"),
])
def test_urls_are_logged_without_their_password(url, shown):
    assert app.redact_url(url) == shown


def test_gradio_may_serve_the_artifacts_folder_only(tmp_path, monkeypatch):
    monkeypatch.delenv("MOE_STUDIO_ARTIFACTS", raising=False)
    monkeypatch.setenv("MOE_STUDIO_HOME", str(tmp_path / "data"))
    assert app.allowed_paths() == [str(tmp_path / "data" / "artifacts")]


def test_every_event_has_its_own_api_name():
    demo = app.build_app()
    names = [fn.api_name for fn in demo.fns.values()]
    assert all(names) and not [n for n, c in collections.Counter(names).items() if c > 1]
    for needed in ("open_model", "analyze", "explore_poll", "estimate", "enqueue", "runs_refresh", "cancel_run",
                   "rerun", "delete_run", "compare", "compare_position", "download_zip"):
        assert needed in names


def test_the_page_does_not_wait_for_torch():
    """Importing the app (what stands between `python app.py` and the first page) loads no torch; models load it
    when they are opened."""
    out = subprocess.run([sys.executable, "-c", "import sys, app; print('torch' in sys.modules)"],
                         capture_output=True, text=True, timeout=120, cwd=Path(app.__file__).parent)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_basic_auth_guards_the_studio(guarded):
    """With --auth, the page and the API answer only after login."""
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(f"{guarded}/config", timeout=10)
    assert denied.value.code == 401
    from gradio_client import Client
    with pytest.raises(Exception):
        Client(guarded, verbose=False)
    assert Client(guarded, auth=("alice", "s3cret"), verbose=False).view_api(return_format="dict")
