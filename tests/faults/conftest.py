"""One intra-op thread for the in-process runs, as the subprocess runs get (OMP_NUM_THREADS=1): on a small
shared machine more threads than free cores make tiny models slower, not faster."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
