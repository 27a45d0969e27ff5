"""Data files: IDX parsing, md5, downloads against a local HTTP server, splits, augmentation."""

import gzip
import hashlib
import http.server
import pickle
import threading
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ffpipe import data
from ffpipe.errors import ConfigError, DataError


def write_idx(path: Path, array: torch.Tensor, magic_type=0x08, compress=True):
    header = bytes([0, 0, magic_type, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + array.to(torch.uint8).numpy().tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    (gzip.open if compress else open)(path, "wb").write(raw)
    return hashlib.md5(path.read_bytes()).hexdigest()


def fake_mnist(root: Path, split="test", n=20):
    folder = root / "MNIST" / "raw"
    (img_name, _), (lab_name, _) = data.MNIST[split]
    images = torch.randint(0, 256, (n, 28, 28))
    labels = torch.arange(n) % 10
    md5s = {img_name: write_idx(folder / img_name, images), lab_name: write_idx(folder / lab_name, labels)}
    return md5s, images, labels


def test_read_idx_roundtrip(tmp_path):
    arr = torch.randint(0, 256, (5, 3, 4))
    write_idx(tmp_path / "a.gz", arr)
    assert torch.equal(data.read_idx(tmp_path / "a.gz"), arr.to(torch.uint8))


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path):
    arr = torch.randint(0, 256, (5, 4))
    write_idx(tmp_path / "bad.gz", arr, magic_type=0x0D)
    with pytest.raises(DataError, match="bad magic"):
        data.read_idx(tmp_path / "bad.gz")
    write_idx(tmp_path / "ok.gz", arr)
    raw = gzip.decompress((tmp_path / "ok.gz").read_bytes())
    gzip.open(tmp_path / "short.gz", "wb").write(raw[:-3])
    with pytest.raises(DataError, match="truncated"):
        data.read_idx(tmp_path / "short.gz")
    (tmp_path / "cut.gz").write_bytes((tmp_path / "ok.gz").read_bytes()[:20])
    with pytest.raises(DataError, match="cannot read"):
        data.read_idx(tmp_path / "cut.gz")


def test_missing_file_offline_is_one_clear_error(tmp_path):
    cfg = OmegaConf.create({"name": "mnist10k", "root": str(tmp_path), "download": False, "num_train": 10})
    with pytest.raises(DataError, match=r"missing data file .*t10k-images-idx3-ubyte.gz"):
        data.build_dataset(cfg, torch.device("cpu"))


def test_wrong_md5_is_reported(tmp_path):
    fake_mnist(tmp_path)
    cfg = OmegaConf.create({"name": "mnist10k", "root": str(tmp_path), "download": False, "num_train": 10})
    with pytest.raises(DataError, match="md5"):  # our fake files do not carry the official md5s
        data.build_dataset(cfg, torch.device("cpu"))


@pytest.fixture
def http_root(tmp_path):
    """Serve tmp_path/'srv' on 127.0.0.1; files named 'flaky-*' fail with 503 on the first request."""
    srv = tmp_path / "srv"
    srv.mkdir()
    seen = set()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(srv), **k)

        def do_GET(self):
            if "flaky-" in self.path and self.path not in seen:
                seen.add(self.path)
                self.send_error(503)
                return
            super().do_GET()

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield srv, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def test_download_verifies_md5_and_retries(http_root, tmp_path):
    srv, url = http_root
    (srv / "flaky-file.bin").write_bytes(b"payload" * 100)
    md5 = hashlib.md5(b"payload" * 100).hexdigest()
    dest = data.download_file([url + "flaky-file.bin"], tmp_path / "out" / "file.bin", md5, retries=2, backoff=0.01)
    assert dest.read_bytes() == b"payload" * 100
    assert not (tmp_path / "out" / "file.bin.part").exists()


def test_download_md5_mismatch_leaves_nothing(http_root, tmp_path):
    srv, url = http_root
    (srv / "f.bin").write_bytes(b"tampered")
    dest = tmp_path / "out" / "f.bin"
    with pytest.raises(DataError, match="md5 mismatch"):
        data.download_file([url + "f.bin"], dest, "0" * 32, retries=2, backoff=0.01)
    assert not dest.exists() and not dest.with_name("f.bin.part").exists()


def test_download_falls_back_to_next_mirror(http_root, tmp_path):
    srv, url = http_root
    (srv / "g.bin").write_bytes(b"x")
    dest = data.download_file([url + "missing/g.bin", url + "g.bin"], tmp_path / "g.bin",
                              hashlib.md5(b"x").hexdigest(), retries=1, backoff=0.01)
    assert dest.read_bytes() == b"x"


def test_mnist_downloads_into_torchvision_layout(http_root, tmp_path, monkeypatch):
    srv, url = http_root
    md5s, images, labels = fake_mnist(srv / "src", split="train", n=30)
    md5s_test, _, _ = fake_mnist(srv / "src", split="test", n=12)
    for name in list(md5s) + list(md5s_test):
        (srv / name).write_bytes((srv / "src" / "MNIST" / "raw" / name).read_bytes())
    spec = dict(data.MNIST, mirrors=[url],
                train=[(n, m) for n, m in md5s.items()], test=[(n, m) for n, m in md5s_test.items()])
    monkeypatch.setattr(data, "MNIST", spec)
    root = tmp_path / "root"
    cfg = OmegaConf.create({"name": "mnist", "root": str(root), "download": True, "backend": "builtin"})
    ds = data.build_dataset(cfg, torch.device("cpu"))
    assert (root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").exists()
    assert len(ds.train) == 30 and len(ds.test) == 12 and ds.image_shape == (1, 28, 28)
    assert torch.equal(ds.train.y, labels)


def test_download_failure_names_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MNIST", dict(data.MNIST, mirrors=["http://127.0.0.1:9/"]))
    monkeypatch.setattr(data, "download_file", lambda *a, **k: (_ for _ in ()).throw(DataError("refused")))
    cfg = OmegaConf.create({"name": "mnist", "root": str(tmp_path), "download": True, "backend": "builtin"})
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz and download failed.*data.root"):
        data.build_dataset(cfg, torch.device("cpu"))


def test_cifar10_builtin_reader(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    entries = []
    for name in ["data_batch_1", "test_batch"]:
        batch = {"data": torch.randint(0, 256, (4, 3072), dtype=torch.uint8).numpy(), "labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
        entries.append((name, hashlib.md5((folder / name).read_bytes()).hexdigest()))
    monkeypatch.setattr(data, "CIFAR10", dict(data.CIFAR10, train=entries[:1], test=entries[1:]))
    cfg = OmegaConf.create({"name": "cifar10", "root": str(tmp_path), "download": False, "backend": "builtin"})
    ds = data.build_dataset(cfg, torch.device("cpu"))
    assert ds.image_shape == (3, 32, 32) and ds.input_dim == 3072 and len(ds.train) == 4


def test_mnist10k_split(shared_data):
    base = {"name": "mnist10k", "root": str(shared_data), "download": False, "num_train": 8000}
    first = data.build_dataset(OmegaConf.create({**base, "split_seed": None}), torch.device("cpu"))
    assert (len(first.train), len(first.test), first.input_dim) == (8000, 2000, 784)
    a = data.build_dataset(OmegaConf.create({**base, "split_seed": 1}), torch.device("cpu"))
    b = data.build_dataset(OmegaConf.create({**base, "split_seed": 1}), torch.device("cpu"))
    assert torch.equal(a.test.y, b.test.y) and not torch.equal(a.test.y, first.test.y)
    assert abs(float(first.train.x.mean())) < 1e-4  # standardized with training statistics
    for bad in (0, 10000, 12000):
        with pytest.raises(ConfigError, match="num_train"):
            data.build_dataset(OmegaConf.create({**base, "num_train": bad}), torch.device("cpu"))


def test_synthetic_is_seeded():
    cfg = OmegaConf.create({"name": "synthetic", "num_train": 32, "num_test": 8, "num_classes": 10,
                            "image_shape": [1, 8, 8], "seed": 3, "noise": 0.1})
    a, b = (data.build_dataset(cfg, torch.device("cpu")) for _ in range(2))
    assert torch.equal(a.train.x, b.train.x) and a.input_dim == 64


def test_random_shift_moves_whole_images():
    img = torch.zeros(1, 1, 6, 6)
    img[0, 0, 2, 3] = 1.0
    x = img.flatten(1).repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(data.random_shift(x, (1, 6, 6), 0, g), x)
    out = data.random_shift(x, (1, 6, 6), 1, g).view(200, 6, 6)
    assert torch.all(out.sum((1, 2)) == 1)  # the bright pixel moved, not duplicated or lost
    pos = out.flatten(1).argmax(1)
    rows, cols = pos // 6, pos % 6
    assert set(rows.tolist()) == {1, 2, 3} and set(cols.tolist()) == {2, 3, 4}
