"""Rate–distortion evaluation: real-file bpp, metrics, baselines against CompressAI's published
JPEG, BD-rate and AUC, the ``rnncodec eval`` command, and the Kodak download helper."""

import csv
import json
import math
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from rnncodec.codec import CodecConfig, CodecError, RNNCodec, compress, save_checkpoint
from rnncodec.codec.bitstream import HEADER_BYTES, prefix_bitstream
from rnncodec.codec.metrics import psnr
from rnncodec.data.errors import RnncodecError
from rnncodec.data.images import load_image
from rnncodec.evaluation import kodak
from rnncodec.evaluation.baselines import BASELINES, encode_decode, parse_baselines
from rnncodec.evaluation.plots import load_anchors
from rnncodec.evaluation.quality import image_metrics, image_metrics_many
from rnncodec.evaluation.rd import (
    auc,
    auc_with_note,
    bd_rate,
    center_crop,
    compare,
    evaluate_checkpoint,
    file_bpp,
    parse_iterations,
    raw_codes,
)
from rnncodec.sweeps import cli

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
KODAK = SHARED / "data" / "kodak"
ANCHORS = SHARED / "anchors" / "kodak"
needs_kodak = pytest.mark.skipif(not (KODAK / "kodim01.png").is_file(),
                                 reason=f"the Kodak images are not at {KODAK} (see codec/kodak.py to download them)")
needs_anchors = pytest.mark.skipif(not (ANCHORS / "compressai" / "jpeg.json").is_file(),
                                   reason=f"the published curves are not at {ANCHORS}")
COMPRESSAI_KEYS = {"bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"}


def _model(seed: int = 0) -> RNNCodec:
    torch.manual_seed(seed)
    return RNNCodec(CodecConfig(width=0.125)).eval()


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([yy + xx, 2 * xx, 255 - yy], axis=-1) % 256
    return np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _eval(*argv: str) -> int:
    args = cli.build_parser().parse_args(["eval", *argv])
    return args.func(args)


# --- metrics, bpp, bitstreams ---------------------------------------------------------------


def test_metrics_of_an_image_against_itself_are_infinite_and_one():
    image = _image(192, 200)
    m = image_metrics(image, image.copy())
    assert m["psnr-rgb"] == math.inf and m["ms-ssim-rgb"] == 1.0 and m["ms-ssim-db"] == math.inf
    noisy = np.clip(image.astype(int) + 3, 0, 255).astype(np.uint8)
    m = image_metrics(image, noisy)
    assert 35 < m["psnr-rgb"] < 45 and 0.9 < m["ms-ssim-rgb"] < 1 and math.isfinite(m["ms-ssim-db"])


def test_standard_ms_ssim_refuses_images_too_small_for_five_scales():
    with pytest.raises(CodecError, match="161 pixels"):
        image_metrics(_image(160, 300), _image(160, 300))


def test_bpp_is_file_size_times_eight_over_pixels_for_our_files_and_baselines():
    image = _image(176, 208)
    pixels = 176 * 208
    data = compress(_model(), image, 3)
    assert file_bpp(data, pixels) == len(data) * 8 / pixels
    for key in ("jpeg", "webp"):
        encoded, rec, enc, dec = encode_decode(image, key, 50)
        assert rec.shape == image.shape and enc > 0 and dec > 0
        assert file_bpp(encoded, pixels) == len(encoded) * 8 / pixels


def test_prefix_of_a_longer_file_is_exactly_the_file_compress_writes():
    model, image = _model(), _image(48, 80)
    full = compress(model, image, 4)
    for k in range(1, 5):
        assert prefix_bitstream(full, k) == compress(model, image, k), k
    with pytest.raises(CodecError):
        prefix_bitstream(full, 5)


QUALITY_KEYS = ("bytes", "bpp", "bpp-payload", "bpp-raw", "bpp-payload-raw", "psnr-rgb", "ms-ssim-rgb", "ms-ssim-db")


def test_evaluate_checkpoint_counts_the_real_bitstream_and_prefix_timing_changes_only_times():
    model = _model()
    images = [("a", _image(176, 176, 1)), ("b", _image(176, 192, 2))]
    exact = evaluate_checkpoint(model, images, "1,2", timing="exact")
    prefix = evaluate_checkpoint(model, images, [1, 2], timing="prefix")
    r = exact["results"]
    assert r["iterations"] == [1, 2] and COMPRESSAI_KEYS <= set(r)
    for row in exact["per_image"]:
        image = dict(images)[row["image"]]
        h, w = image.shape[:2]
        chunk = -(-h // 16) * -(-w // 16) * 32 // 8  # 32 code bits per 16×16 block
        assert row["bytes"] == len(compress(model, image, row["iterations"]))  # the real (entropy-coded) file
        assert row["bpp"] == row["bytes"] * 8 / (h * w)
        assert row["bpp-raw"] == (HEADER_BYTES + row["iterations"] * (chunk + 4)) * 8 / (h * w)
        assert row["bpp-raw"] * h * w / 8 == len(compress(model, image, row["iterations"], entropy_coding=False))
        assert row["bpp-payload-raw"] == row["iterations"] * chunk * 8 / (h * w)
        assert row["bpp-payload"] < row["bpp"] and row["bpp"] < row["bpp-raw"]
    assert np.mean([row["bpp"] for row in exact["per_image"] if row["iterations"] == 2]) == r["bpp"][1]
    for key in ("bpp", "bpp-payload", "bpp-raw", "psnr-rgb", "ms-ssim-rgb"):
        assert prefix["results"][key] == r[key], key
    raw = raw_codes(exact)
    assert raw["results"]["bpp"] == r["bpp-raw"] and raw["results"]["psnr-rgb"] == r["psnr-rgb"]


def test_default_prefix_scoring_equals_full_decodes_and_times_only_the_sample():
    """The default scores each image from one file at the largest count (smaller counts cut from it,
    one progressive decode): every per-image figure equals a real compress and decompress at each k."""
    model = _model(1)
    images = [("a", _image(176, 176, 3)), ("b", _image(192, 176, 4))]
    exact = evaluate_checkpoint(model, images, "1-5", timing="exact")
    sample = evaluate_checkpoint(model, images, "1-5")  # timing="sample": the first image timed at every k
    assert len(sample["per_image"]) == len(exact["per_image"]) == 10
    for s, e in zip(sample["per_image"], exact["per_image"]):
        assert (s["image"], s["iterations"]) == (e["image"], e["iterations"])
        assert {k: s[k] for k in QUALITY_KEYS} == {k: e[k] for k in QUALITY_KEYS}, (s["image"], s["iterations"])
        assert ("encoding_time" in s) == ("decoding_time" in s) == (s["image"] == "a")
    r = sample["results"]
    timed = [row["encoding_time"] for row in sample["per_image"] if "encoding_time" in row]
    assert r["encoding_time"] == timed and timed == sorted(timed) and 0 < timed[0]
    assert "on the first image:" in sample["timing"] and sample["timing"] in sample["description"]
    every = evaluate_checkpoint(model, images, "2,4", timing="prefix")
    assert all(row["decoding_time"] > 0 for row in every["per_image"]) and "on every image" in every["timing"]
    untimed = evaluate_checkpoint(model, images[:1], "1,3", timing_images=0)
    assert all(math.isnan(v) for v in untimed["results"]["encoding_time"] + untimed["results"]["decoding_time"])
    for bad in (-1, 1.5, True):
        with pytest.raises(CodecError, match="timed images"):
            evaluate_checkpoint(model, images, "1", timing_images=bad)
    with pytest.raises(CodecError, match="timing must be one of"):
        evaluate_checkpoint(model, images, "1", timing="fast")


def test_batched_image_metrics_equal_one_call_per_image():
    image = _image(176, 200, 6)
    rng = np.random.default_rng(6)
    decoded = [np.clip(image.astype(int) + rng.integers(-s, s + 1, image.shape), 0, 255).astype(np.uint8)
               for s in (1, 8, 30, 90)] + [image.copy()]
    batched = image_metrics_many(image, decoded)
    for b, d in zip(batched, decoded):
        one = image_metrics(image, d)
        assert b["psnr-rgb"] == one["psnr-rgb"]
        assert b["ms-ssim-rgb"] == pytest.approx(one["ms-ssim-rgb"], abs=1e-6)
    assert batched[-1] == {"psnr-rgb": math.inf, "ms-ssim-rgb": 1.0, "ms-ssim-db": math.inf}
    assert image_metrics_many(image, []) == []
    with pytest.raises(CodecError, match="decoded image is"):
        image_metrics_many(image, [decoded[0], decoded[0][:-1]])


def test_bad_iteration_specs_and_baselines_are_clean_errors():
    assert parse_iterations("1-16") == list(range(1, 17))
    assert parse_iterations("1,2,4,8,16") == [1, 2, 4, 8, 16]
    assert parse_iterations("8,1-3") == [1, 2, 3, 8]
    for bad in ("0-3", "1-17", "3-1", "a", "", "1,,2"):
        with pytest.raises(CodecError):
            parse_iterations(bad)
    assert parse_baselines("jpeg, webp") == ["jpeg", "webp"] and parse_baselines("none") == []
    with pytest.raises(CodecError, match="unknown baseline 'png'"):
        parse_baselines("jpeg,png")


# --- baselines against the published numbers -------------------------------------------------


@needs_kodak
def test_jpeg_quality_5_on_kodak_matches_compressai_published_point():
    """CompressAI's jpeg.json: 0.2212 bpp, 23.78 dB at quality 5 (Pillow defaults: 4:2:0, no
    Huffman optimisation). bpp and PSNR only, to keep the test fast."""
    bpps, psnrs = [], []
    for path in sorted(KODAK.glob("kodim*.png")):
        image = load_image(path)
        data, rec, _, _ = encode_decode(image, "jpeg", 5)
        bpps.append(file_bpp(data, image.shape[0] * image.shape[1]))
        psnrs.append(psnr(image, rec))
    assert len(bpps) == 24
    assert np.mean(bpps) == pytest.approx(0.2212, abs=0.004)
    assert np.mean(psnrs) == pytest.approx(23.78, abs=0.25)


@needs_anchors
def test_published_anchors_load_with_their_metrics():
    anchors = {a["name"]: a for a in load_anchors(ANCHORS)}
    toderici = anchors["Toderici 2017 (published)"]["results"]
    assert toderici["bpp"][0] == 0.125 and len(toderici["bpp"]) == 16
    assert {"psnr-rgb", "ms-ssim-rgb"} <= set(toderici)
    assert anchors["JPEG (CompressAI)"]["results"]["bpp"][0] == pytest.approx(0.2212, abs=1e-3)
    assert auc(anchors["Toderici 2017 (published)"], "ms-ssim-rgb") == pytest.approx(1.81, abs=0.01)


def test_bd_rate_of_a_curve_against_itself_is_zero_and_half_the_bits_is_minus_half():
    anchor = {"name": "a", "results": {"bpp": [0.25, 0.5, 1.0, 2.0], "psnr-rgb": [26.0, 29.0, 32.0, 35.0],
                                       "ms-ssim-rgb": [0.9, 0.95, 0.98, 0.99]}}
    half = {"name": "t", "results": {**anchor["results"], "bpp": [b / 2 for b in anchor["results"]["bpp"]]}}
    assert bd_rate(anchor, anchor)["bd_rate"] == pytest.approx(0, abs=1e-9)
    for metric in ("psnr-rgb", "ms-ssim-db"):
        assert bd_rate(anchor, half, metric)["bd_rate"] == pytest.approx(-50, abs=1e-6)
    flat = {"name": "flat", "results": {"bpp": [0.1, 0.2], "psnr-rgb": [12.0, 12.0], "ms-ssim-rgb": [0.3, 0.3]}}
    assert bd_rate(anchor, flat)["bd_rate"] is None
    dip = {"name": "dip", "results": {"bpp": [0.125, 0.25, 0.5, 1.0, 2.0], "psnr-rgb": [26.0, 29.0, 28.0, 32.0, 35.0],
                                      "ms-ssim-rgb": [0.9, 0.95, 0.94, 0.98, 0.99]}}
    result = bd_rate(anchor, dip)
    assert result["bd_rate"] is not None and "used the 4 of 5 points" in result["note"]


def _curve(bpp: list[float], values: list[float]) -> dict:
    return {"name": "c", "results": {"bpp": bpp, "ms-ssim-rgb": values, "psnr-rgb": [20 + 10 * v for v in values]}}


def test_auc_extrapolates_a_curve_a_little_short_of_the_range_and_says_why_it_cannot_otherwise():
    bpp = [0.125 * k for k in range(1, 17)]
    full = _curve(bpp, [0.5 + 0.2 * b for b in bpp])  # a straight line: extrapolation is exact on it
    value, note = auc_with_note(full)
    assert note == "" and value == pytest.approx(0.5 * 1.875 + 0.1 * (4 - 0.125**2))
    short = np.linspace(0.135, 1.89, 15)  # e.g. a 481×321 image's padding at one end
    padded = _curve(list(short), [0.5 + 0.2 * b for b in short])
    value, note = auc_with_note(padded)
    assert value == pytest.approx(auc(full)) and auc(padded) == value
    assert note == "extrapolated from 0.135 down to 0.125 bpp; extrapolated from 1.890 up to 2 bpp"
    assert auc_with_note(_curve([0.3, 1.0, 2.0], [0.8, 0.9, 0.95])) == (
        None, "curve starts at 0.300 bpp, more than 10% above 0.125")
    assert auc_with_note(_curve([0.125, 1.0, 1.5], [0.8, 0.9, 0.95])) == (
        None, "curve ends at 1.500 bpp, more than 10% below 2")
    assert auc_with_note(_curve([0.5, 0.5], [0.8, 0.9])) == (None, "fewer than 2 points with a finite ms-ssim-rgb")
    summary = compare([padded], [])
    assert summary["codecs"]["c"]["auc_notes"]["ms-ssim-rgb"].startswith("extrapolated from 0.135")


# --- the command ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, _model())
    return path


@needs_kodak
def test_eval_of_a_small_checkpoint_on_two_kodak_images(tiny_ckpt, tmp_path):
    out = tmp_path / "results"
    anchors = ["--anchors", str(ANCHORS)] if ANCHORS.is_dir() else []
    assert _eval("--checkpoint", str(tiny_ckpt), "--images", str(KODAK), "--limit", "2", "--crop", "256",
                 "--iterations", "1-2", "--baselines", "jpeg", "--qualities", "5,75", "--out", str(out),
                 *anchors) == 0
    for name in ("rnncodec.json", "jpeg.json"):
        d = json.loads((out / name).read_text())
        assert {"name", "description", "results"} <= set(d) and COMPRESSAI_KEYS <= set(d["results"])
        assert all(len(v) == 2 for v in d["results"].values())
    ours = json.loads((out / "rnncodec.json").read_text())["results"]
    raw = json.loads((out / "rnncodec-raw-codes.json").read_text())["results"]
    assert ours["iterations"] == raw["iterations"] == [1, 2] and raw["bpp-payload"] == [0.125, 0.25]
    # raw: 29-byte header plus, per iteration, 256 blocks × 32 bits and a 4-byte CRC; entropy coding saves
    assert raw["bpp"] == [(HEADER_BYTES + k * (1024 + 4)) * 8 / 256**2 for k in (1, 2)]
    assert all(c < w for c, w in zip(ours["bpp"], raw["bpp"])) and raw["psnr-rgb"] == ours["psnr-rgb"]
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == 2 * 2 * 2 + 2 * 2
    assert {r["image"] for r in rows} == {"kodim01.png", "kodim02.png"}
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["codecs"]["rnncodec"]["bd_rate_percent"]["JPEG"]) == {"psnr-rgb", "ms-ssim-db"}
    assert "rnncodec (raw codes)" in summary["codecs"]
    assert summary["codecs"]["rnncodec"]["auc"]["ms-ssim-rgb"] is None  # 2 iterations: nowhere near 2 bpp
    assert summary["codecs"]["rnncodec"]["auc_notes"]["ms-ssim-rgb"].startswith("curve ends at 0.")
    assert "times on the first image:" in summary["timing"]
    assert summary["entropy_coding"]["rnncodec"]["saving_percent"][0] > 0
    for stem in ("rd_psnr", "rd_ms-ssim", "rd_ms-ssim-db"):
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, message", [
    (["--images", "/nonexistent/kodak"], "no such folder"),
    (["--iterations", "0-4"], "iterations must lie in 1..16"),
    (["--baselines", "jpeg,gif"], "unknown baseline 'gif'"),
    (["--anchors", "/nonexistent/anchors"], "no such anchors folder"),
    (["--timing-images", "-1"], "number of timed images"),
])
def test_eval_bad_input_is_a_one_line_codec_error(tiny_ckpt, tmp_path, argv, message):
    base = {"--checkpoint": str(tiny_ckpt), "--images": str(tmp_path), "--out": str(tmp_path / "o")}
    base.update(dict(zip(argv[::2], argv[1::2])))
    with pytest.raises(RnncodecError, match=message) as info:
        _eval(*[x for kv in base.items() for x in kv])
    assert "\n" not in str(info.value)


def test_eval_refuses_a_bad_checkpoint_and_an_empty_folder(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    images = tmp_path / "images"
    images.mkdir()
    with pytest.raises(RnncodecError, match="holds no images"):
        _eval("--checkpoint", str(bad), "--images", str(images), "--out", str(tmp_path / "o"), "--baselines", "none")
    from PIL import Image

    Image.fromarray(_image(176, 176)).save(images / "a.png")
    with pytest.raises(CodecError, match="not a readable checkpoint"):
        _eval("--checkpoint", str(bad), "--images", str(images), "--out", str(tmp_path / "o"), "--baselines", "none")


def test_center_crop_keeps_the_middle():
    image = _image(512, 768)
    crop = center_crop(image, 256)
    assert crop.shape == (256, 256, 3) and np.array_equal(crop, image[128:384, 256:512])


# --- Kodak download helper ---------------------------------------------------------------------


@needs_kodak
def test_kodak_sums_in_the_module_match_the_shared_copy():
    sums = dict(reversed(line.split()) for line in (KODAK / "SHA256SUMS").read_text().splitlines() if line.strip())
    assert sums == kodak.SHA256 and len(kodak.URLS) == 24
    assert all(url.startswith("https://") and url.endswith(name) for name, url in kodak.URLS.items())
    assert set(kodak.verify_kodak(KODAK).values()) == {"ok"}


@needs_kodak
def test_kodak_download_checks_sums_and_writes_only_verified_files(tmp_path):
    fetched = []

    def fetch(url, timeout):
        fetched.append(url)
        return (KODAK / url.rsplit("/", 1)[1]).read_bytes()

    dest = tmp_path / "kodak"
    dest.mkdir()
    (dest / "kodim03.png").write_bytes((KODAK / "kodim03.png").read_bytes())
    (dest / "kodim04.png").write_bytes(b"corrupted")
    paths = kodak.download_kodak(dest, fetch=fetch)
    assert len(paths) == 24 and set(kodak.verify_kodak(dest).values()) == {"ok"}
    assert len(fetched) == 23 and kodak.URLS["kodim03.png"] not in fetched

    def corrupt(url, timeout):
        return b"evil"

    other = tmp_path / "other"
    with pytest.raises(CodecError, match="expected"):
        kodak.download_kodak(other, fetch=corrupt)
    assert not other.exists() or not any(other.iterdir())


def test_kodak_download_offline_names_the_images_option(tmp_path):
    def offline(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    with pytest.raises(CodecError, match="--images DIR") as info:
        kodak.download_kodak(tmp_path / "k", fetch=offline)
    assert "\n" not in str(info.value)


def test_every_baseline_is_known_to_pillow_or_reported_unavailable():
    for key, b in BASELINES.items():
        if b.available():
            data, rec, _, _ = encode_decode(_image(64, 64), key, 50)
            assert len(data) > 0 and rec.shape == (64, 64, 3)
        else:
            with pytest.raises(CodecError, match="lacks"):
                parse_baselines(key)


def test_rnncodec_eval_through_the_cli_reports_bad_input_in_one_line(tiny_ckpt, tmp_path, capsys):
    code = cli.main(["eval", "--checkpoint", str(tiny_ckpt), "--images", str(tmp_path / "missing"),
                     "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("rnncodec: error: no such folder")


@pytest.mark.parametrize("change, message", [
    ({"bpp": ["abc", 0.5]}, "could not convert string to float: 'abc'"),
    ({"bpp": [0.25, float("nan")]}, "nan is not a finite number"),
    ({"bpp": [0.25]}, "needs at least two points at positive rates"),
    ({"bpp": [0.0, 0.5]}, "needs at least two points at positive rates"),
    ({"psnr-rgb": [26.0, 29.0, 30.0]}, "psnr-rgb has 3 values for 2 rates"),
    ({"psnr-rgb": [[1, 2], 3.0]}, r"\[1, 2\] is not a finite number"),
])
def test_damaged_anchor_curves_are_refused_when_read(tmp_path, change, message):
    (tmp_path / "x.json").write_text(json.dumps({"name": "x", "results": {"bpp": [0.5, 0.25],
                                                                        "psnr-rgb": [29.0, 26.0], **change}}))
    with pytest.raises(CodecError, match=message) as info:
        load_anchors(tmp_path)
    assert "\n" not in str(info.value)


def test_anchor_curves_are_sorted_by_rate_and_special_files_refused(tmp_path):
    (tmp_path / "a_psnr_rgb.txt").write_text("# bpp, psnr\n1.0, 32\n0.5, 29\n")
    (curve,) = load_anchors(tmp_path)
    assert curve["results"] == {"bpp": [0.5, 1.0], "psnr-rgb": [29.0, 32.0]}
    os.mkfifo(tmp_path / "b.json")  # read, it would wait forever
    with pytest.raises(CodecError, match=r"b\.json is not a regular file"):
        load_anchors(tmp_path)
    (tmp_path / "b.json").unlink()
    (tmp_path / "a_psnr_rgb.txt").unlink()
    with pytest.raises(CodecError, match="holds no published curves"):
        load_anchors(tmp_path)
