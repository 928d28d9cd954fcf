"""Host-to-device copies: the same values on every path; staged through pinned memory on a GPU."""

import numpy as np
import pytest
import torch

from vqabench.data import ImageStore
from vqabench.transfer import index_tensor, rows_to, to_device

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def store_array(n: int = 6) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, 3, 4, 4), dtype=np.uint8)


def test_to_device_on_the_same_device_is_the_tensor_itself():
    t = torch.arange(3)
    assert to_device(t, "cpu") is t


def test_rows_to_gathers_the_rows_in_order():
    source = torch.from_numpy(store_array())
    got = rows_to(source, [4, 0, 4], "cpu")
    assert torch.equal(got, source[[4, 0, 4]])


def test_index_tensor_is_long():
    t = index_tensor([2, 0, 1], "cpu")
    assert t.dtype == torch.long and t.tolist() == [2, 0, 1]


def test_store_gather_from_a_memory_map_gives_floats_in_unit_range(tmp_path):
    np.save(tmp_path / "s.npy", store_array())
    store = ImageStore([f"p{i}" for i in range(6)], np.load(tmp_path / "s.npy", mmap_mode="c"))
    got = store.gather(["p5", "p1"], torch.device("cpu"))
    assert got.dtype == torch.float32 and torch.equal(got, torch.from_numpy(store_array()[[5, 1]]).float() / 255)


@cuda
def test_host_rows_reach_the_gpu_through_pinned_memory():
    source = torch.from_numpy(store_array())
    got = rows_to(source, [3, 1], "cuda")
    assert got.is_cuda and torch.equal(got.cpu(), source[[3, 1]])
    moved = to_device(torch.arange(5), "cuda")
    assert moved.is_cuda and moved.tolist() == list(range(5))


@cuda
def test_store_on_the_host_and_on_the_gpu_give_the_same_batch():
    paths = [f"p{i}" for i in range(6)]
    host = ImageStore(paths, store_array())
    on_gpu = host.to(torch.device("cuda"))
    a = host.gather(["p2", "p0"], torch.device("cuda"))
    b = on_gpu.gather(["p2", "p0"])
    assert a.is_cuda and b.is_cuda and torch.equal(a, b)
