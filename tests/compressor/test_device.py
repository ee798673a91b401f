"""Devices: the torch-free resolver and its refusals, the recipe / CLI fields, and that device=cpu changes nothing.
No GPU is needed; the CUDA comparisons run only where one is present."""
import subprocess
import sys

import pytest
import torch

from compressor.device import DeviceUnavailable, check_device_spec, needs_gpu, resolve_device
from compressor.importance.analyze import AnalyzeConfig
from compressor.recipe import Recipe, RecipeError
from compressor.stream.analyze import stream_analyze
from compressor.stream.evaluate import stream_quality
from compressor.stream.skeleton import Skeleton
from compressor.testing import tiny_inputs
from tests.compressor.stream.models import padded_batches, saved_tiny

CUDA = torch.cuda.is_available()


def test_the_resolver_follows_its_rule():
    assert resolve_device("auto", cuda_available=True) == "cuda"
    assert resolve_device("auto", cuda_available=False) == "cpu"
    assert resolve_device("cpu", cuda_available=True) == "cpu"
    assert resolve_device("cuda", cuda_available=True) == "cuda"
    assert resolve_device("cuda:1", cuda_available=True, device_count=2) == "cuda:1"
    assert [needs_gpu(s) for s in ("auto", "cpu", "cuda", "cuda:3")] == [None, False, True, True]


def test_devices_the_machine_lacks_are_refused_with_what_to_use():
    with pytest.raises(DeviceUnavailable, match=r"^no CUDA device: torch.cuda.is_available\(\) is False; use device: "
                                                r"cpu or auto$"):
        resolve_device("cuda", cuda_available=False)
    with pytest.raises(DeviceUnavailable, match="no CUDA device"):
        resolve_device("cuda:0", cuda_available=False)
    with pytest.raises(DeviceUnavailable, match=r"no device cuda:2: this machine has 2 CUDA devices \(cuda:0 .. "
                                                r"cuda:1\); use one of those, cuda or auto"):
        resolve_device("cuda:2", cuda_available=True, device_count=2)
    with pytest.raises(DeviceUnavailable, match=r"has 1 CUDA device \(cuda:0\)"):
        resolve_device("cuda:1", cuda_available=True, device_count=1)


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:-1", "cuda:01", "CPU", "mps", "", "cuda:1 "])
def test_malformed_device_names_are_refused(bad):
    with pytest.raises(ValueError, match="is not one of: auto .*cpu, cuda or cuda:N"):
        check_device_spec(bad)


def test_the_resolver_module_does_not_import_torch():
    code = "import sys, compressor.device as d; d.needs_gpu('cuda:1'); d.resolve_device('cpu'); " \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_recipe_carries_the_device_and_refuses_bad_ones():
    r = Recipe.parse({"execution": {"device": "cuda:1"}})
    assert r.execution.device == "cuda:1" and Recipe.from_yaml(r.to_yaml()) == r
    assert Recipe().execution.device == "auto"
    assert Recipe.parse({"version": 1}).execution.device == "cpu"        # an older recipe ran on the CPU: kept
    with pytest.raises(RecipeError, match="execution: device 'gpu' is not one of"):
        Recipe.parse({"execution": {"device": "gpu"}})


@pytest.mark.parametrize("command", ["analyze", "slim", "eval"])
def test_the_commands_take_device(command):
    from compressor.cli import build_parser
    parser, _ = build_parser()
    extra = {"analyze": ["--out", "x"], "slim": ["--out", "x"], "eval": []}[command]
    assert parser.parse_args([command, "demo", *extra]).device == "auto"
    assert parser.parse_args([command, "demo", *extra, "--device", "cuda:1"]).device == "cuda:1"
    with pytest.raises(SystemExit):
        parser.parse_args([command, "demo", *extra, "--device", "gpu"])


@pytest.mark.skipif(CUDA, reason="this machine has a GPU")
def test_a_cuda_run_is_refused_before_any_work(tmp_path):
    from compressor.pipeline import run_recipe
    from compressor.sources import load_model
    with pytest.raises(DeviceUnavailable, match="no CUDA device"):
        run_recipe(Recipe.parse({"model": "demo", "execution": {"device": "cuda"}}), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(DeviceUnavailable, match="no CUDA device"):
        load_model("demo", device="cuda:0")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return saved_tiny(tmp_path_factory, "qwen3_moe")


def _same(a, b, **tol):
    for part in ("experts", "neurons", "layers"):
        x, y = getattr(a, part), getattr(b, part)
        for name in x.__dataclass_fields__:
            u, v = getattr(x, name), getattr(y, name)
            if torch.is_tensor(u):
                torch.testing.assert_close(u, v, **tol) if tol else torch.testing.assert_close(u, v, rtol=0, atol=0)


@pytest.mark.parametrize("taylor", [False, True])
def test_device_cpu_gives_the_in_memory_figures(ckpt, taylor):
    """Layer by layer with an explicit device (each loaded layer moved there, activations kept on the CPU) against
    the in-memory engine, an independent path (it compared the call with its own default, which could not fail)."""
    from compressor.evaluate.quality import compare_quality
    from compressor.importance.analyze import analyze
    folder, model = ckpt
    cfg = AnalyzeConfig(taylor=taylor)
    _same(stream_analyze(folder, padded_batches(), config=cfg, device="cpu"),
          analyze(model, padded_batches(), config=cfg), rtol=1e-5, atol=1e-9)
    windows = tiny_inputs(128, batch=4, seq=12, seed=3)
    got = stream_quality(folder, folder, windows, batch_size=2, device="cpu")
    want = compare_quality(model, model, windows, batch_size=2)
    assert got.perplexity == pytest.approx(want.perplexity, rel=1e-5) and got.agreement == want.agreement


def test_a_skeleton_loads_its_layers_onto_its_device(ckpt):
    folder, _ = ckpt
    sk = Skeleton.open(folder, device="cpu")
    assert sk.device == torch.device("cpu")
    layer = sk.load_layer_(1)
    assert {p.device.type for p in layer.parameters()} == {"cpu"}
    sk.release_layer_(1)
    assert {p.device.type for p in layer.parameters()} == {"meta"}


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("taylor", [False, True])
def test_on_cuda_the_layer_runs_on_the_gpu_and_scores_match_the_cpu(ckpt, taylor):
    folder, model = ckpt
    cfg = AnalyzeConfig(taylor=taylor)
    _same(stream_analyze(folder, padded_batches(), config=cfg, device="cuda"),
          stream_analyze(folder, padded_batches(), config=cfg, device="cpu"), rtol=1e-3, atol=1e-5)
    from compressor.importance.analyze import analyze
    import copy
    on_gpu = copy.deepcopy(model).to("cuda")
    _same(analyze(on_gpu, padded_batches(), config=cfg), analyze(model, padded_batches(), config=cfg),
          rtol=1e-3, atol=1e-5)


def _shards(folder):
    from safetensors.torch import load_file
    return {p.name: load_file(p) for p in sorted(folder.glob("*.safetensors"))}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA,
                                                                                           reason="needs a CUDA GPU"))])
def test_streamed_slimming_on_a_device_writes_the_cpu_tensors(ckpt, tmp_path, device):
    from compressor.recipe import SlimmingConfig
    from compressor.stream.slim import stream_slim
    folder, _ = ckpt
    report = stream_analyze(folder, padded_batches(), config=AnalyzeConfig(taylor=False))
    cfg = SlimmingConfig(expert_keep_ratio=0.5, neuron_score="activation", experts_keep=4, sparsity=0.4)
    stream_slim(folder, report, cfg, tmp_path / "cpu", batches=padded_batches())
    stream_slim(folder, report, cfg, tmp_path / device / "out", batches=padded_batches(), device=device)
    want, got = _shards(tmp_path / "cpu"), _shards(tmp_path / device / "out")
    assert want.keys() == got.keys()
    for name in want:
        for k in want[name]:
            if device == "cpu":
                assert torch.equal(got[name][k], want[name][k]), k
            else:                # the cut is exact; Wanda's norms on the GPU may round differently
                torch.testing.assert_close(got[name][k], want[name][k], rtol=1e-3, atol=1e-3)
