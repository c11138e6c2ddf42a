"""Arrow shard reader against torchvision's CIFAR10 + DataLoader: throughput, and the reader's peak RSS.

    python benchmarks/data_loading.py --root ../shared/data/cifar10 --accept-unverified

Prints one JSON object. Throughput is measured on CIFAR-10's 50,000 training images, batch 128, both
paths in this process; peak RSS in a fresh process per set, over one full shuffled epoch, on the 50k
set and on a 400k set (CIFAR-10 + CIFAR-100 with 4 rotations when CIFAR-100 is under --root, else
CIFAR-10 with 4 rotations written twice). ``--accept-unverified`` is needed for a copy that does not
match the official md5 sums (such as the shared one), for both our reader and torchvision's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from rnncodec.data.errors import DataError
from rnncodec.data.reader import DEFAULT_MAX_MAPPED

ROOT = Path(__file__).resolve().parents[1]

BATCH = 128
SHARED = ROOT.parent / "shared" / "data" / "cifar10"


def _status() -> dict:
    """VmHWM (peak), VmRSS, RssAnon and RssFile of this process in MB."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key = line.split(":")[0]
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                values[key] = round(int(line.split()[1]) / 1024, 1)
    return values


def rss_child(folder: str, max_mapped_bytes: int) -> None:
    """Run in a fresh process: one shuffled epoch through the loader; print its memory as JSON."""
    from rnncodec import data
    from rnncodec.data.loader import BatchLoader

    reader = data.open_split(folder, verify_sha256=False, max_mapped_bytes=max_mapped_bytes)
    loader = BatchLoader(reader, BATCH, seed=0)
    before = _status()
    start, images = time.perf_counter(), 0
    for batch in loader:
        images += len(batch)
    seconds = time.perf_counter() - start
    after = _status()
    print(
        json.dumps(
            {
                "images": len(reader),
                "shard_mb": round(sum(f.stat().st_size for f in reader.files) / 1e6, 1),
                "images_per_s": round(images / seconds),
                "rss_after_imports_mb": before["VmRSS"],
                "peak_rss_mb": after["VmHWM"],
                "peak_rss_above_imports_mb": round(after["VmHWM"] - before["VmRSS"], 1),
                "end_rss_anon_mb": after["RssAnon"],
                "end_rss_file_mb": after["RssFile"],
            }
        )
    )


def measure_rss(folder: Path, max_mapped_bytes: int) -> dict:
    command = [sys.executable, __file__, "--rss-child", str(folder), "--max-mapped-bytes", str(max_mapped_bytes)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def write_repeated(source: Path, out: Path, repeats: int) -> Path:
    """A training split holding ``source``'s training rows ``repeats`` times (for a larger set without more data)."""
    from rnncodec import data
    from rnncodec.data.files import write_json
    from rnncodec.data.shards import DEFAULT_ROWS_PER_SHARD, FORMAT_VERSION, MANIFEST, Rows, ShardWriter

    out.mkdir(parents=True, exist_ok=True)
    with data.open_split(source, verify_sha256=False) as reader:
        writer = ShardWriter(out, "train", ["cifar10"], DEFAULT_ROWS_PER_SHARD)
        columns = {name: reader.column(name) for name in ("label", "coarse_label", "index", "rotation")}
        for _ in range(repeats):
            for start in range(0, len(reader), 16384):
                rows = np.arange(start, min(start + 16384, len(reader)))
                writer.write(
                    Rows(
                        reader.images(rows),
                        *(columns[c][rows] for c in ("label", "coarse_label")),
                        np.zeros(len(rows), np.int32),
                        columns["index"][rows],
                        columns["rotation"][rows],
                    )
                )
        split = writer.close()
    write_json(
        out / MANIFEST,
        {
            "format": FORMAT_VERSION,
            "name": out.name,
            "key": "benchmark",
            "params": {"repeats": repeats, "of": str(source)},
            "splits": {"train": split},
        },
    )
    return out


def reader_throughput(folder: Path, epochs: int) -> dict:
    from rnncodec import data
    from rnncodec.data.loader import BatchLoader

    loader = BatchLoader(data.open_split(folder, verify_sha256=False), BATCH, seed=0)
    rates = []
    for _ in range(epochs):
        start, images = time.perf_counter(), 0
        for batch in loader:
            images += len(batch)
        rates.append(images / (time.perf_counter() - start))
    return {"images_per_s": round(float(np.median(rates))), "mb_per_s": round(float(np.median(rates)) * 3072 / 1e6, 1)}


def torchvision_throughput(archive_root: Path, workdir: Path, workers: int, official: bool) -> dict:
    import torch
    import torchvision
    from torchvision import transforms

    folder = workdir / "torchvision"
    if not folder.exists():
        archive = archive_root if archive_root.is_file() else archive_root / "cifar-10-python.tar.gz"
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")

    dataset_class = torchvision.datasets.CIFAR10
    if not official:  # an accepted unverified copy: torchvision would refuse its md5 sums

        class Unverified(torchvision.datasets.CIFAR10):
            def _check_integrity(self) -> bool:
                return True

        dataset_class = Unverified
    dataset = dataset_class(str(folder), train=True, transform=transforms.PILToTensor())
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers)
    start, images = time.perf_counter(), 0
    for batch, _ in loader:
        images += len(batch)
    rate = images / (time.perf_counter() - start)
    return {"num_workers": workers, "images_per_s": round(rate), "mb_per_s": round(rate * 3072 / 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--root",
        type=Path,
        default=SHARED,
        help="CIFAR-10 archive or folder (CIFAR-100 beside it is used for the 400k set)",
    )
    parser.add_argument(
        "--accept-unverified", action="store_true", help="accept archives whose md5 sums are not the official ones"
    )
    parser.add_argument("--workdir", type=Path, help="where shards go (default: a temporary folder, removed after)")
    parser.add_argument("--epochs", type=int, default=3, help="reader epochs timed (median reported)")
    parser.add_argument(
        "--max-mapped-bytes",
        type=int,
        default=DEFAULT_MAX_MAPPED,
        help="the reader's mapped-page budget (also run at 64 MiB and unbounded)",
    )
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return rss_child(args.rss_child, args.max_mapped_bytes)

    from rnncodec import data
    from rnncodec.data.cifar import CIFAR100, locate

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        cache = work / "cache"
        start = time.perf_counter()
        small = data.prepare("cifar10", root=args.root, accept_unverified=args.accept_unverified, cache_dir=cache)
        prepare_50k = time.perf_counter() - start
        folder = args.root if args.root.is_dir() else args.root.parent
        try:
            locate(CIFAR100, folder)
            has_cifar100 = True
        except DataError:
            has_cifar100 = False
        if has_cifar100:
            large = data.prepare(
                "cifar", root=folder, rotations=4, accept_unverified=args.accept_unverified, cache_dir=cache
            )
            how = "CIFAR-10 + CIFAR-100, 4 rotations"
        else:
            rotated = data.prepare(
                "cifar10", root=args.root, rotations=4, accept_unverified=args.accept_unverified, cache_dir=cache
            )
            large = write_repeated(rotated, work / "cifar10-r4-x2", repeats=2)
            how = "CIFAR-10, 4 rotations, written twice (no CIFAR-100 here)"
        official = json.loads((small / "manifest.json").read_text())["source"]["cifar10"]["official"]

        reader = reader_throughput(small, args.epochs)
        baselines = [torchvision_throughput(args.root, work, workers, official) for workers in (0, 2)]
        best = max(b["images_per_s"] for b in baselines)
        result = {
            "machine": {"cpus": len(os.sched_getaffinity(0)), "python": sys.version.split()[0]},
            "batch_size": BATCH,
            "throughput_50k": {
                "arrow_reader": reader,
                "torchvision_cifar10_dataloader": baselines,
                "speedup_vs_best_torchvision": round(reader["images_per_s"] / best, 1),
            },
            "prepare_50k_s": round(prepare_50k, 1),
            "400k_built_from": how,
            "peak_rss": {
                f"map_budget_{budget >> 20}mb": {"50k": measure_rss(small, budget), "400k": measure_rss(large, budget)}
                for budget in (args.max_mapped_bytes, 64 << 20)
            }
            | {"map_unbounded": {"400k": measure_rss(large, 1 << 50)}},
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    try:
        main()
    except DataError as exc:
        sys.exit(f"data_loading: error: {exc}")
