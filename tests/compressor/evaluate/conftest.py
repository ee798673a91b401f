import pytest
import torch

from compressor import testing


@pytest.fixture(scope="session")
def char_tokenizer():
    return testing.char_tokenizer()
