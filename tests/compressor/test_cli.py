"""The CLI dispatcher: every command is registered, and the model-safety flags reach the loader."""
import json

import torch

from compressor import cli
from compressor.testing import tiny_moe


def test_every_command_is_registered():
    _, handlers = cli.build_parser()
    assert set(handlers) == {"inspect", "analyze", "slim", "run", "quantize", "eval", "recipe", "demo-model"}


def test_pickle_weights_need_the_flag(tmp_path, capsys):
    folder = tmp_path / "pickled"
    model = tiny_moe("mixtral")
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")

    assert cli.main(["inspect", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "--allow-pickle" in err and "Traceback" not in err

    assert cli.main(["inspect", str(folder), "--allow-pickle"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "mixtral" and info["num_experts"] == 8 and info["top_k"] == 2
