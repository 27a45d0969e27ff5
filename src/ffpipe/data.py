"""Datasets as tensors on the training device.

Files are read from torchvision's folder layout (``<root>/MNIST/raw/*.gz``,
``<root>/FashionMNIST/raw/*.gz``, ``<root>/cifar-10-batches-py/``) and downloaded when missing,
with md5 verification, retries and cleanup of partial files. When torchvision imports, its dataset
classes do the loading; otherwise (our CPU machines) the built-in readers below do the same job.

After loading, a whole split lives on the device as ``x`` (float, ``[N, C*H*W]``, standardized) and
``y`` (long, ``[N]``). Shuffling, batching and augmentation happen there, never per sample in Python.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from ffpipe.errors import ConfigError, DataError, config_int

log = logging.getLogger(__name__)

DATA_ENV_VAR = "FFPIPE_DATA"

# (file name, md5) per split, and the mirrors tried in order, as torchvision has them.
MNIST = {
    "folder": "MNIST",
    "mirrors": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
    "train": [("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
              ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432")],
    "test": [("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
             ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c")],
}
FASHION_MNIST = {
    "folder": "FashionMNIST",
    "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    "train": [("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
              ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe")],
    "test": [("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
             ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310")],
}
CIFAR10 = {
    "folder": "cifar-10-batches-py",
    "mirrors": ["https://www.cs.toronto.edu/~kriz/"],
    "archive": ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "train": [("data_batch_1", "c99cafc152244af753f735de768cd75f"),
              ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
              ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
              ("data_batch_4", "634d18415352ddbe9f15b7a7cc4d1b8b"),
              ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb")],
    "test": [("test_batch", "40351d587109b95175f43aff81a1287e")],
}

IDX_DTYPES = {0x08: torch.uint8}  # the only element type the MNIST family uses


def default_root() -> str:
    """``$FFPIPE_DATA`` if set (like ``TORCH_HOME``), else ``./data``."""
    return os.environ.get(DATA_ENV_VAR) or "./data"


# --------------------------------------------------------------------------- files and downloads

def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download_file(urls: list[str], dest: Path, md5: str | None, retries: int = 3,
                  timeout: float = 30.0, backoff: float = 1.0) -> Path:
    """Download ``dest`` from the first URL that works, verifying its md5.

    Each URL is tried ``retries`` times with exponential backoff. Bytes go to ``dest.part`` and are
    renamed into place only after the md5 matches, so an interrupted or corrupt download never
    leaves a file that looks complete.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    errors = []
    for url in urls:
        for attempt in range(retries):
            try:
                req = urllib.request.Request(url, headers={"User-Agent": "ffpipe"})
                with urllib.request.urlopen(req, timeout=timeout) as resp, open(part, "wb") as out:
                    shutil.copyfileobj(resp, out)
                got = md5sum(part)
                if md5 is not None and got != md5:
                    raise DataError(f"md5 mismatch for {url}: got {got}, expected {md5}")
                os.replace(part, dest)
                return dest
            except (OSError, urllib.error.URLError, DataError) as e:  # URLError is an OSError
                errors.append(f"{url}: {e}")
                part.unlink(missing_ok=True)
                if attempt + 1 < retries:
                    time.sleep(backoff * 2 ** attempt)
    raise DataError(f"could not download {dest.name} ({'; '.join(errors[-len(urls):])})")


def ensure_file(folder: Path, name: str, md5: str, mirrors: list[str], download: bool,
                verify: bool = True) -> Path:
    """Return ``folder/name``, downloading it if missing; verify its md5 if ``verify``."""
    path = folder / name
    if not path.exists():
        if not download:
            raise DataError(f"missing data file {path}; set data.download=true or copy it there "
                            f"(data.root / ${DATA_ENV_VAR} point at the dataset root)")
        log.info("downloading %s into %s", name, folder)
        try:
            download_file([m + name for m in mirrors], path, md5)
        except DataError as e:
            raise DataError(f"missing data file {path} and download failed: {e}. Copy the file "
                            f"there by hand, or point data.root / ${DATA_ENV_VAR} at a folder "
                            f"that has it") from None
    if verify and (got := md5sum(path)) != md5:
        raise DataError(f"corrupt data file {path}: md5 {got}, expected {md5}; delete it and "
                        f"run again to re-download")
    return path


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (optionally gzipped) into a uint8 tensor, validating magic and size."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e} (truncated or not gzip?)") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: IDX header is truncated")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    count = 1
    for d in dims:
        count *= d
    if len(raw) - header != count:
        raise DataError(f"{path}: IDX header says {dims} ({count} bytes) but the file holds "
                        f"{len(raw) - header} bytes (truncated?)")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(dims)


def load_idx_pair(root: Path, spec: dict, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    folder = root / spec["folder"] / "raw"
    (img_name, img_md5), (lab_name, lab_md5) = spec[split]
    images = read_idx(ensure_file(folder, img_name, img_md5, spec["mirrors"], download))
    labels = read_idx(ensure_file(folder, lab_name, lab_md5, spec["mirrors"], download))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(f"{folder}: images {tuple(images.shape)} do not match labels {tuple(labels.shape)}")
    return images.unsqueeze(1), labels.long()  # [N, 1, 28, 28]


def load_cifar10(root: Path, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    folder = root / CIFAR10["folder"]
    needed = CIFAR10[split]
    if not all((folder / n).exists() for n, _ in needed):
        archive_name, archive_md5 = CIFAR10["archive"]
        archive = ensure_file(root, archive_name, archive_md5, CIFAR10["mirrors"], download)
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(root, filter="data")
    xs, ys = [], []
    for name, md5 in needed:
        path = ensure_file(folder, name, md5, [], download=False)
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            xs.append(torch.as_tensor(batch["data"], dtype=torch.uint8).reshape(-1, 3, 32, 32))
            ys.append(torch.as_tensor(batch["labels"], dtype=torch.long))
        except (pickle.UnpicklingError, KeyError, EOFError, ValueError) as e:
            raise DataError(f"corrupt CIFAR-10 batch {path}: {e}") from None
    return torch.cat(xs), torch.cat(ys)


def _torchvision_datasets():
    """torchvision.datasets if it imports cleanly here, else None (CPU wheels here cannot)."""
    try:
        import torchvision.datasets as tvd  # noqa: PLC0415
        return tvd
    except Exception:  # a CUDA-built torchvision raises OSError/RuntimeError, not ImportError
        return None


def load_raw(name: str, root: Path, split: str, download: bool, backend: str = "auto"):
    """Return ``(uint8 images [N, C, H, W], long labels [N])`` for one split of a named dataset."""
    if backend not in ("auto", "torchvision", "builtin"):
        raise ConfigError(f"data.backend must be auto, torchvision or builtin, got {backend!r}")
    tvd = _torchvision_datasets() if backend != "builtin" else None
    if backend == "torchvision" and tvd is None:
        raise ConfigError("data.backend=torchvision but torchvision does not import here; "
                          "install the 'vision' extra or use data.backend=auto")
    if tvd is not None:
        cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
        try:
            ds = cls(str(root), train=(split == "train"), download=download)
        except RuntimeError as e:  # torchvision's "Dataset not found" when offline
            raise DataError(f"{name} ({split}) under {root}: {e}") from None
        x = torch.as_tensor(ds.data)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        return x.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)
    if name == "mnist":
        return load_idx_pair(root, MNIST, split, download)
    if name == "fashion_mnist":
        return load_idx_pair(root, FASHION_MNIST, split, download)
    if name == "cifar10":
        return load_cifar10(root, split, download)
    raise AssertionError(name)


# --------------------------------------------------------------------------- on-device dataset

@dataclass
class Split:
    """One split on the device: flattened standardized images and integer labels."""

    x: torch.Tensor  # float32 [N, C*H*W]
    y: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    image_shape: tuple[int, int, int]
    num_classes: int

    @property
    def input_dim(self) -> int:
        c, h, w = self.image_shape
        return c * h * w


def synthetic(num_train: int, num_test: int, num_classes: int, image_shape, seed: int, noise: float):
    """Seeded, learnable data: each class is a random prototype image plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    dim = int(torch.tensor(image_shape).prod())
    protos = torch.rand(num_classes, dim, generator=g)

    def make(n):
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = (protos[y] + noise * torch.randn(n, dim, generator=g)).clamp(0, 1)
        return (x * 255).round().to(torch.uint8).reshape(n, *image_shape), y

    return make(num_train), make(num_test)


def split_indices(n: int, num_train: int, seed: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``num_train`` for training and the rest for testing, or a seeded random split."""
    order = torch.arange(n) if seed is None else torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return order[:num_train], order[num_train:]


def build_dataset(cfg, device: torch.device) -> Dataset:
    """Build the dataset named by ``cfg.name`` (a ``data`` config group node) on ``device``."""
    name = cfg.name
    root = Path(cfg.root if cfg.get("root") else default_root()).expanduser()
    download = bool(cfg.get("download", True))
    backend = cfg.get("backend", "auto")
    if name in ("mnist", "fashion_mnist", "cifar10"):
        (xtr, ytr), (xte, yte) = (load_raw(name, root, s, download, backend) for s in ("train", "test"))
    elif name == "mnist10k":
        x, y = load_idx_pair(root, MNIST, "test", download)
        num_train = config_int(cfg.num_train, "data.num_train", 1)
        if not 0 < num_train < len(y):
            raise ConfigError(f"data.num_train must be in 1..{len(y) - 1} for mnist10k "
                              f"(the file holds {len(y)} digits), got {num_train}")
        tr, te = split_indices(len(y), num_train, cfg.get("split_seed"))
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
    elif name == "synthetic":
        sizes = [config_int(cfg[key], f"data.{key}", 1) for key in ("num_train", "num_test", "num_classes")]
        (xtr, ytr), (xte, yte) = synthetic(*sizes, tuple(cfg.image_shape), int(cfg.seed), float(cfg.noise))
    else:
        raise ConfigError(f"unknown dataset {name!r}; expected mnist, fashion_mnist, cifar10, "
                          f"mnist10k or synthetic")
    image_shape = tuple(int(s) for s in xtr.shape[1:])
    num_classes = config_int(cfg.get("num_classes", 10), "data.num_classes", 2)
    if int(max(ytr.max(), yte.max())) >= num_classes:
        raise DataError(f"{name}: labels exceed num_classes={num_classes}")

    # Standardize with training-set statistics (one scalar mean/std, as the FF references do).
    xtr = xtr.to(device=device, dtype=torch.float32).flatten(1).div_(255)
    xte = xte.to(device=device, dtype=torch.float32).flatten(1).div_(255)
    if cfg.get("standardize", True):
        mean, std = xtr.mean(), xtr.std()
        xtr.sub_(mean).div_(std)
        xte.sub_(mean).div_(std)
    return Dataset(name, Split(xtr, ytr.to(device)), Split(xte, yte.to(device)), image_shape, num_classes)


# --------------------------------------------------------------------------- augmentation

def random_shift(x: torch.Tensor, image_shape, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate every image by its own random (dy, dx) in ``[-max_shift, max_shift]``; uncovered
    pixels take the background value (the minimum of ``x``: black after standardization). One
    gather over a padded canvas, no Python per sample, no host sync."""
    if max_shift <= 0:
        return x
    c, h, w = image_shape
    n, s = x.shape[0], max_shift
    canvas = x.min().expand(n, c, h + 2 * s, w + 2 * s).clone()
    canvas[..., s:s + h, s:s + w] = x.view(n, c, h, w)
    off = torch.randint(0, 2 * s + 1, (2, n), device=x.device, generator=generator)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + off[0].view(n, 1, 1)  # [n, h, 1]
    cols = torch.arange(w, device=x.device).view(1, 1, w) + off[1].view(n, 1, 1)  # [n, 1, w]
    flat = (rows * (w + 2 * s) + cols).view(n, 1, h * w).expand(n, c, h * w)
    return canvas.flatten(2).gather(2, flat).reshape(n, c * h * w)
