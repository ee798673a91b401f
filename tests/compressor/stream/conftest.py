import pytest

from compressor.testing import TINY_FAMILIES
from tests.compressor.stream.models import saved_tiny


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def family_ckpt(request, tmp_path_factory):
    """(family, folder, model) for every tiny family (fp32), saved in the hub key layout."""
    folder, model = saved_tiny(tmp_path_factory, request.param)
    return request.param, folder, model
