"""Wanda statistics (importance/wanda_stats.py): the scores, the exact lower median and the layer statistics sparsify_ and Explore share,
by hand."""
import math

import pytest
import torch

from compressor.importance.wanda_stats import LinearMap, layer_statistics, lower_median, wanda_scores


def test_wanda_scores_and_layer_statistics_by_hand():
    w = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    x = torch.tensor([2.0, 3.0])                               # ||X||
    assert wanda_scores(weight=w, input_norms=x).tolist() == [[2.0, 6.0], [6.0, 0.0]]
    # second map: per-expert leading axis [E=2, out=1, in=1], A = 4 and 0
    w2 = torch.tensor([[[1.0]], [[-1.0]]])
    maps = [LinearMap(0, "a", w), LinearMap(0, "b", w2), LinearMap(1, "a", w)]
    inputs = {"a": x, "b": torch.tensor([[4.0], [0.0]])}
    medians, shares, count = layer_statistics(maps, inputs, 2, owl_m=1.5)
    assert medians.tolist() == [2.0, 2.0]                      # sorted [0, 0, 2, 4, 6, 6]: the lower middle value
    assert shares[0].item() == pytest.approx(2 / 6)            # layer 0: mean 3, entries > 4.5: the two 6s
    assert shares[1].item() == pytest.approx(2 / 4)            # layer 1: mean 3.5, > 5.25: the two 6s
    assert count.tolist() == [6.0, 4.0]
    means, _, _ = layer_statistics(maps, inputs, 2, owl_m=None, dlp_statistic="mean")
    assert means.tolist() == pytest.approx([3.0, 3.5])


def test_lower_median_by_hand():
    assert lower_median(chunks=lambda: [torch.tensor([3.0, 1.0]), torch.tensor([2.0, 5.0])]) == 2.0   # even: lower
    assert lower_median(chunks=lambda: [torch.tensor([[9.0, 0.5]]), torch.tensor([0.25])]) == 0.5     # odd
    assert lower_median(chunks=lambda: [torch.tensor([-0.0, 0.0, 7.0])]) == 0.0                       # -0 is 0
    assert math.isnan(lower_median(chunks=lambda: [torch.zeros(0)]))
    with pytest.raises(ValueError, match=">= 0"):
        lower_median(chunks=lambda: [torch.tensor([1.0, -1.0])])


@pytest.mark.parametrize("sizes", [(1,), (2, 3), (1000, 1, 4097), (64, 64)])
def test_lower_median_equals_torch_median_of_the_concatenation(sizes):
    g = torch.Generator().manual_seed(sum(sizes))
    # values spread over 12 orders of magnitude, with ties and zeros, so both radix passes matter
    chunks = [(torch.rand(n, generator=g) * 10.0 ** torch.randint(-6, 6, (n,), generator=g)).float()
              for n in sizes] + [torch.zeros(3), torch.full((5,), 0.125)]
    want = torch.median(torch.cat(chunks)).item()
    assert lower_median(chunks=lambda: iter(chunks)) == want
    assert lower_median(chunks=lambda: (c.double() for c in chunks)) == want   # float64 in: median in float32
