import pytest
import torch


@pytest.fixture(scope="session")
def char_tokenizer():
    """One token per printable ASCII character (ids 3..97) plus pad/bos/eos: fits the tiny models' vocab of 128."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2} | {chr(c): 3 + c - 32 for c in range(32, 127)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
