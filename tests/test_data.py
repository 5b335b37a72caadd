import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fdbench.data import ImageFolderDataset, dataset_resolution, load_split_tensor, open_dataset, to_rgb
from fdbench.errors import FdbenchError


def _write_odd_images(folder):
    folder.mkdir(parents=True)
    rgb = (np.random.default_rng(0).uniform(0, 255, (20, 24, 3))).astype(np.uint8)
    Image.fromarray(rgb).convert("L").save(folder / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.gif")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(folder / "sixteen.png")
    Image.fromarray(rgb).save(folder / "plain.jpg", quality=90)


def test_odd_modes_become_rgb(tmp_path):
    _write_odd_images(tmp_path / "train" / "a")
    ds = open_dataset(tmp_path, "train")
    assert len(ds) == 6 and ds.classes == ["a"]
    for i in range(len(ds)):
        img, label = ds[i]
        assert img.mode == "RGB" and img.size == (24, 20) and label == 0
    # 16-bit values are scaled, not clipped: the image is not saturated white
    sixteen = next(ds[i][0] for i in range(len(ds)) if ds.samples[i][0].endswith("sixteen.png"))
    assert 30 < np.asarray(sixteen).mean() < 225


def test_to_rgb_on_float_mode():
    img = Image.fromarray(np.full((4, 4), 127.5, dtype=np.float32))
    assert to_rgb(img).mode == "RGB"


def test_broken_files_are_skipped_with_a_count(tmp_path):
    folder = tmp_path / "train" / "a"
    _write_odd_images(folder)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "garbage.png").write_bytes(b"not an image at all")
    good = (folder / "plain.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    with pytest.warns(UserWarning, match=r"skipped 3 unreadable image"):
        ds = open_dataset(tmp_path, "train")
    assert len(ds) == 6 and len(ds.skipped) == 3


def test_lazy_mode_replaces_broken_files(tmp_path):
    folder = tmp_path / "a"
    _write_odd_images(folder)
    (folder / "zzz_broken.png").write_bytes(b"nope")
    ds = ImageFolderDataset(tmp_path, scan=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img, _ = ds[len(ds) - 1]  # the broken file is last: wraps around to a good one
    assert img.mode == "RGB" and any("unreadable" in str(w.message) for w in caught)


def test_missing_and_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(FdbenchError, match="not found"):
        open_dataset(tmp_path / "nope", "train")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FdbenchError, match="no images found"):
        open_dataset(tmp_path, "train")
    with pytest.raises(FdbenchError, match="no val/ folder"):
        open_dataset(tmp_path, "val")
    with pytest.raises(FdbenchError, match="unknown split"):
        open_dataset(tmp_path, "holdout")


def test_class_list_subset(tiny_dataset, tmp_path):
    listing = tmp_path / "classes.txt"
    listing.write_text("# ImageNet-100 style\nsquare\ndisk\n")
    ds = open_dataset(tiny_dataset, "train", class_list=listing)
    assert ds.classes == ["square", "disk"] and set(ds.targets) == {0, 1} and len(ds) == 40
    listing.write_text("disk\nunicorn\n")
    with pytest.raises(FdbenchError, match="unicorn"):
        open_dataset(tiny_dataset, "train", class_list=listing)


def test_torchvision_formats_read_local_files_only(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(FdbenchError, match="cannot read cifar10"):
        open_dataset(tmp_path, "train")
    assert dataset_resolution(f"cifar10:{tmp_path}") == 32


def test_default_dataset_and_tensor_loading(tiny_dataset):
    x, y, classes = load_split_tensor(tiny_dataset, "val", 32, resize=32, max_per_class=3)
    assert x.shape == (12, 3, 32, 32) and x.dtype == torch.uint8
    assert y.bincount().tolist() == [3, 3, 3, 3] and len(classes) == 4
    assert dataset_resolution(tiny_dataset) == 32
