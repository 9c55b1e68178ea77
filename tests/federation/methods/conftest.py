import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests multiply tiny matrices thousands of times; torch's thread pool only adds
    synchronisation cost there (10-20x on a busy 2-core machine). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
