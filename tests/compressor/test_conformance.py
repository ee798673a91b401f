"""Every supported family passes the conformance suite on a tiny instance of its own config; every MoE family of
the installed transformers is either supported or listed, with its reason, as known-unsupported."""
import pytest

from compressor.families import UnsupportedModelError, resolve_adapter
from compressor.families.catalog import KNOWN_UNSUPPORTED, SUPPORTED, installed_moe_families
from compressor.conformance import CHECKS, run_checks, status
from compressor.testing import tiny_config


def test_every_installed_moe_family_is_supported_or_listed_with_a_reason():
    installed = set(installed_moe_families())
    unknown = sorted(installed - set(SUPPORTED) - set(KNOWN_UNSUPPORTED))
    assert not unknown, f"transformers has MoE families the studio neither supports nor lists: {unknown}"
    assert not set(SUPPORTED) & set(KNOWN_UNSUPPORTED)
    assert all(len(reason) > 30 for reason in KNOWN_UNSUPPORTED.values())
    assert len(set(SUPPORTED) & installed) >= 50


@pytest.mark.parametrize("model_type", SUPPORTED)
def test_supported_family_passes_every_check(model_type):
    results = run_checks(model_type)
    failed = {c: r for c, r in results.items() if status(r) == "FAIL"}
    assert not failed, failed
    assert results["verify"] is None and results["identity"] is None and results["reload"] is None
    assert all(results[c] is None or results[c].startswith("refused: ") and len(results[c]) > 40 for c in CHECKS)


@pytest.mark.parametrize("model_type", sorted(KNOWN_UNSUPPORTED))
def test_known_unsupported_family_is_refused_naming_it(model_type):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    with pytest.raises(UnsupportedModelError, match=model_type):
        resolve_adapter(CONFIG_MAPPING[model_type]())


def test_a_dense_model_is_called_dense_and_a_moe_never_is():
    import transformers as tf
    with pytest.raises(UnsupportedModelError, match="dense model"):
        resolve_adapter(tf.LlamaConfig())
    assert resolve_adapter(tiny_config("dbrx")).num_experts(tiny_config("dbrx")) == 8


def test_readme_family_list_matches_the_registry():
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    listed = readme.split("<!-- families:start -->")[1].split("<!-- families:end -->")[0]
    assert sorted(t.strip("` ") for t in listed.replace("\n", " ").split(",") if t.strip()) == sorted(SUPPORTED)
