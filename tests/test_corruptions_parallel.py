"""CPU corruption on several cores: chunks run side by side, and the bytes do not depend on how many."""

import threading

import pytest
import torch

from corruptions import corrupt
from corruptions.registry import ALL, CPU_CHUNK_IMAGES, cpu_map


@pytest.fixture
def threads():
    before = torch.get_num_threads()

    def set_threads(n):
        torch.set_num_threads(n)

    yield set_threads
    torch.set_num_threads(before)


def _images(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def test_cpu_map_runs_items_concurrently_and_in_order():
    barrier = threading.Barrier(2, timeout=10)

    def fn(i):
        barrier.wait()  # raises BrokenBarrierError unless two items run at the same time
        return i * i

    assert cpu_map(fn, range(4), workers=2) == [0, 1, 4, 9]
    # nested: serial inside a worker (no pool of pools); one intra-op thread while mapping
    assert cpu_map(lambda i: cpu_map(lambda j: torch.get_num_threads(), range(2), workers=2), range(2), workers=2) == [
        [1, 1],
        [1, 1],
    ]


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_bytes_on_one_and_two_threads(threads, name):
    x = _images(CPU_CHUNK_IMAGES * 2 + 5, 32)  # three chunks
    threads(1)
    one = corrupt(x, name, 3, generator=11)
    threads(2)
    two = corrupt(x, name, 3, generator=11)
    assert torch.equal(one, two)
    assert not torch.equal(two, corrupt(x, name, 3, generator=12)) or name in (
        "defocus_blur",
        "zoom_blur",
        "brightness",
        "contrast",
        "pixelate",
        "jpeg_compression",
        "gaussian_blur",
        "saturate",
    )


def test_float_input_and_224px_chunks_are_thread_count_independent(threads):
    x = _images(17, 224)  # 8 + 8 + 1 ImageNet-sized images per chunk
    outs = []
    for n in (1, 2):
        threads(n)
        outs.append([corrupt(x, "contrast", 2, generator=3), corrupt(x.float() / 255, "gaussian_blur", 2, generator=3)])
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_evaluation_chunks_are_thread_count_independent(threads):
    from analysis.evaluate import CHUNK, corrupt_images, default_corrupt_fn

    x = _images(CHUNK * 2 + 3, 32, seed=1)
    outs = []
    for n in (1, 2):
        threads(n)
        outs.append(corrupt_images(x, 0, "shot_noise", 2, default_corrupt_fn(), seed=4))
    assert torch.equal(*outs)
