"""Both built-in models pass the model-roots rule of the Model tab and of the worker's check before it loads
(issue 25: demo-smollm was a source the library knew and the studio refused as a path outside the roots)."""
import pytest

from workers.roots import allowed_source, check_run_source


@pytest.mark.parametrize("name", ["demo", "demo-smollm", "DEMO-SmolLM"])
def test_built_in_names_are_allowed_and_checked_as_themselves(name, tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_STUDIO_MODEL_ROOTS", str(tmp_path))
    assert allowed_source(name, kind="any") == name.lower()
    check_run_source(name)                       # nothing to check against the roots: it raises nothing


def test_the_model_tab_opens_the_pretrained_demo_by_its_name():
    from ui.model import KINDS, _source_text
    kind = next(k for k, v in KINDS.items() if v == "demo-smollm")
    assert _source_text(kind, "", "", None, {}) == "demo-smollm"
