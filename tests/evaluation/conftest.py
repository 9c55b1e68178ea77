import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Generation runs many forward passes of a few tokens each; torch's thread pool only
    adds synchronisation cost there (10x and more on a busy 2-core machine). Restored
    afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
