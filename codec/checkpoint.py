"""Model checkpoints: the weights plus the configuration that builds the network.

Saved with ``torch.save`` (written to a temporary file, then renamed) and loaded with
``torch.load(weights_only=True)``, so a checkpoint can never run code when it is opened.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import warnings
import weakref
from pathlib import Path
from typing import Any

import torch

from rnncodec.codec.errors import CodecError
from rnncodec.codec.model import CodecConfig, RNNCodec
from rnncodec.data.errors import shown
from rnncodec.data.files import open_regular, write_atomic

FORMAT = "rnncodec-model"
VERSION = 1
# The model that ships with the package (how it was trained: codec/pretrained/README.md).
DEFAULT_CHECKPOINT = Path(__file__).parent / "pretrained" / "lstm-additive-w025.pt"


def model_state(model: RNNCodec) -> dict[str, Any]:
    """Everything needed to rebuild ``model``: a dict of tensors and plain values."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def model_from_state(state: Any, source: str = "checkpoint") -> RNNCodec:
    """Rebuild a model from :func:`model_state`'s dict, in evaluation mode.

    The configuration and every weight's name and shape are checked against a skeleton built on
    the meta device (no memory) first, so a checkpoint whose configuration implies weights it does
    not hold is refused before they are allocated."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CodecError(f"{source} is not an rnncodec model checkpoint; make one with `rnncodec train`")
    if state.get("version") != VERSION:
        raise CodecError(f"{source} has checkpoint version {shown(state.get('version'))}, this rnncodec reads "
                         f"version {VERSION}; upgrade rnncodec or retrain")
    if not isinstance(state.get("config"), dict):
        raise CodecError(f"{source} has no model configuration (its config is {shown(state.get('config'))}); "
                         "the file is damaged; give a checkpoint written by `rnncodec train`")
    try:
        config = CodecConfig.from_dict(state["config"])
    except CodecError as exc:
        raise CodecError(f"{source}: {exc}; the file is damaged or not written by `rnncodec train`") from None
    weights = state.get("state_dict")
    if not isinstance(weights, dict):
        raise CodecError(f"{source} has no weights (its state_dict is {shown(weights)}); the file is damaged")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in RNNCodec(config).state_dict().items()}
    problem = _weights_problem(expected, weights)
    if problem:
        raise CodecError(f"{source} does not match its own configuration ({problem}); the file is damaged")
    model = RNNCodec(config)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CodecError(f"{source} does not match its own configuration ({first}); the file is damaged") from None
    return model.eval()


def _weights_problem(expected: dict[str, tuple[int, ...]], weights: dict) -> str | None:
    """What is wrong with ``weights`` for a network whose weights have the ``expected`` shapes, if anything."""
    missing = [k for k in expected if k not in weights]
    if missing:
        return f"{len(missing)} weights missing, e.g. {shown(missing[:3])}"
    unexpected = [k for k in weights if k not in expected]
    if unexpected:
        return f"{len(unexpected)} unknown weights, e.g. {shown(unexpected[:3])}"
    for name, shape in expected.items():
        value = weights[name]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.layout != torch.strided:
            return f"{name} is {shown(value)}, not a dense floating-point tensor"
        if tuple(value.shape) != shape:
            return f"{name} has shape {tuple(value.shape)} where the configuration needs {shape}"
        # A tensor can declare more elements than the file stores (stride 0); copying it into the
        # model would allocate what the file never held.
        if value.untyped_storage().nbytes() < value.numel() * value.element_size():
            return f"{name} declares {value.numel()} values but the file stores fewer"
    return None


def save_checkpoint(path: str | Path, model: RNNCodec, **extra: Any) -> None:
    """Write ``model`` (plus plain ``extra`` values such as training steps) to ``path`` atomically."""
    buf = io.BytesIO()
    torch.save({**model_state(model), **extra}, buf)
    write_atomic(path, buf.getvalue())


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file safely (``weights_only=True``) as a dict."""
    path = Path(path)
    try:
        with open_regular(path, "checkpoint", CodecError) as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on old pickle protocols: the error says enough
            return torch.load(f, map_location="cpu", weights_only=True)
    except CodecError:
        raise
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if found := re.search(r"GLOBAL (\S+)", text):
            raise CodecError(f"{path} holds Python objects besides tensors ({found[1].rstrip('.,')}), which rnncodec never writes "
                             "and never loads (they can run code); give a file written by `rnncodec train`") from None
        if text.startswith("Weights only load failed"):  # the cause sits among torch's advice on turning it off
            lines = (line.strip() for line in text.splitlines()[1:])
            text = next((line for line in lines if line and not line.startswith(("Please", "Check", "("))), "")
        raise _unreadable(path, pickle.UnpicklingError(text)) from None
    except Exception as exc:  # noqa: BLE001 - torch.load of damaged bytes fails in a dozen ways, all bad input
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: Exception) -> CodecError:
    first = (str(exc).strip().splitlines() or [""])[0]
    first = first if len(first) <= 160 else first[:160] + "…"
    first = f"{type(exc).__name__}: {first}" if len(first) < 30 else first  # "KeyError: 101" rather than "101"
    return CodecError(f"{path} is not a readable checkpoint ({first}); give a file written by `rnncodec train`")


def load_checkpoint(path: str | Path | None = None) -> RNNCodec:
    """The model stored in checkpoint ``path`` (the bundled one by default), in evaluation mode on the CPU."""
    return model_from_state(read_checkpoint(DEFAULT_CHECKPOINT if path is None else path), str(path or DEFAULT_CHECKPOINT))


def warm_start(model: RNNCodec, path: str | Path) -> list[str]:
    """Copy the encoder, binarizer and decoder of checkpoint ``path`` into ``model``, which may use
    another reconstruction mode (a gain estimator on either side is new or dropped). Returns the
    names of ``model``'s weights that the checkpoint did not provide."""
    source = load_checkpoint(path).state_dict()
    own = model.state_dict()
    core = [k for k in own if not k.startswith("gain.")]
    differing = [k for k in core if k not in source or source[k].shape != own[k].shape]
    if differing:
        raise CodecError(f"{path} does not fit this network ({len(differing)} weights differ, e.g. {differing[:3]}); "
                         "give --init a checkpoint of the same cell and width")
    shared = {k: v for k, v in source.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(shared, strict=False)
    return sorted(set(own) - set(shared))


_id_cache: weakref.WeakKeyDictionary[RNNCodec, tuple[tuple, bytes]] = weakref.WeakKeyDictionary()


def model_id(model: RNNCodec) -> bytes:
    """8 bytes identifying the weights and configuration; written into every bitstream.

    Hashing a paper-size model takes a fraction of a second, so the value is cached and
    recomputed only when a parameter has changed (tensors count their in-place updates).
    """
    tensors = list(model.state_dict().values())
    key = tuple((t.data_ptr(), t._version) for t in tensors)
    cached = _id_cache.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    digest = h.digest()[:8]
    _id_cache[model] = (key, digest)
    return digest
