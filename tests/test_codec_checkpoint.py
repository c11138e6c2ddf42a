"""Checkpoints hold weights and configuration and are read with weights_only=True."""

import pickle

import pytest
import torch

from rnncodec.codec import (
    CodecConfig,
    CodecError,
    RNNCodec,
    checkpoint,
    load_checkpoint,
    model_id,
    save_checkpoint,
    warm_start,
)
from rnncodec.codec.checkpoint import model_state


def test_round_trip_rebuilds_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = RNNCodec(CodecConfig(cell="gru", mode="residual-scaling", width=0.125, activation="leaky-relu"))
    save_checkpoint(tmp_path / "m.pt", model, steps=7)
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.config == model.config and not loaded.training
    x = torch.rand(1, 3, 32, 32) - 0.5
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x, 3)["x_hat"][-1], loaded(x, 3)["x_hat"][-1])
    assert model_id(loaded) == model_id(model)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left behind


def test_model_id_follows_the_weights():
    model = RNNCodec(CodecConfig(width=0.125))
    before = model_id(model)
    assert model_id(model) == before
    with torch.no_grad():
        model.decoder.conv_out.weight.add_(1e-3)
    assert model_id(model) != before


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_unsafe_or_foreign_files_are_refused(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Exploit()}, evil)
    with pytest.raises(CodecError, match=r"holds Python objects besides tensors \(print\), which rnncodec never writes"):
        load_checkpoint(evil)
    assert "pwned" not in capsys.readouterr().out
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2, 3]) + b"junk")
    with pytest.raises(CodecError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    for name, content in [("text.pt", b"hello\n"), ("stream.pt", b"RNNC\x02" + bytes(40))]:
        (tmp_path / name).write_bytes(content)  # torch.load fails on these with KeyError and IndexError
        with pytest.raises(CodecError, match=r"not a readable checkpoint \(\w+Error: "):
            load_checkpoint(tmp_path / name)
    sparse = model_state(RNNCodec(CodecConfig(width=0.125)))
    sparse["state_dict"]["encoder.conv.weight"] = sparse["state_dict"]["encoder.conv.weight"].to_sparse()
    torch.save(sparse, tmp_path / "sparse.pt")
    with pytest.raises(CodecError, match="encoder.conv.weight is .*, not a dense floating-point tensor"):
        load_checkpoint(tmp_path / "sparse.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CodecError, match="not an rnncodec model checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CodecError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")


def test_warm_start_copies_matching_weights_and_names_the_new_ones(tmp_path):
    torch.manual_seed(0)
    additive = RNNCodec(CodecConfig(width=0.125))
    save_checkpoint(tmp_path / "a.pt", additive)
    scaled = RNNCodec(CodecConfig(width=0.125, mode="residual-scaling"))
    new = warm_start(scaled, tmp_path / "a.pt")
    assert new and all(name.startswith("gain.") for name in new)
    assert torch.equal(scaled.encoder.conv.weight, additive.encoder.conv.weight)
    with pytest.raises(CodecError, match="same cell and width"):
        warm_start(RNNCodec(CodecConfig(width=0.25)), tmp_path / "a.pt")


def _small_state() -> dict:
    torch.manual_seed(0)
    return model_state(RNNCodec(CodecConfig(width=0.125)))


def _refused(tmp_path, state: dict, match: str) -> None:
    path = tmp_path / "crafted.pt"
    torch.save(state, path)
    with pytest.raises(CodecError, match=match) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("config, match", [
    (None, "has no model configuration"),
    ("width=0.25", "has no model configuration"),
    ({"width": "0.25"}, "width must be a finite number, got '0.25'"),
    ({"width": 0.125, "kernel_size": 61}, "kernel sizes must be odd in 1..7"),
    ({"width": 0.125, "bits": "32"}, "bits must be an integer"),
    ({"width": 0.125, "depth": 3}, "unknown codec configuration keys"),
])
def test_a_missing_or_malformed_configuration_is_refused_in_one_line(tmp_path, config, match):
    _refused(tmp_path, {**_small_state(), "config": config}, match)


def test_a_checkpoint_without_a_configuration_is_refused(tmp_path):
    state = _small_state()
    del state["config"]
    _refused(tmp_path, state, "has no model configuration")


def test_weights_are_checked_against_a_meta_skeleton_before_the_model_is_allocated(tmp_path, monkeypatch):
    built = []

    class Spy(RNNCodec):
        def __init__(self, config):
            built.append(torch.get_default_device().type)
            super().__init__(config)

    monkeypatch.setattr(checkpoint, "RNNCodec", Spy)
    state = _small_state()
    # The configuration claims 7×7 kernels; the file holds the 3×3 ones. Only the meta skeleton may
    # be built: with a larger width the real model would be gigabytes the file never held.
    _refused(tmp_path, {**state, "config": {**state["config"], "kernel_size": 7}},
             r"encoder\.conv\.weight has shape \(8, 3, 3, 3\) where the configuration needs \(8, 3, 7, 7\)")
    assert built == ["meta"]


_MISSING = object()


@pytest.mark.parametrize("name, value, match", [
    ("decoder.conv_out.weight", _MISSING, r"1 weights missing, e.g. \['decoder.conv_out.weight'\]"),
    ("extra", torch.zeros(1), "1 unknown weights"),
    ("encoder.conv.weight", [0.0] * 8, r"encoder.conv.weight is \[0.0, .*not a dense floating-point tensor"),
    ("encoder.conv.weight", torch.zeros(8, 3, 3, 3, dtype=torch.int64), "not a dense floating-point tensor"),
    # a stride-0 view of one stored value declaring the weight's full shape
    ("encoder.conv.weight", torch.zeros(1).expand(8, 3, 3, 3), "declares 216 values but the file stores fewer"),
])
def test_weights_that_do_not_fit_the_configuration_are_refused(tmp_path, name, value, match):
    state = _small_state()
    if value is _MISSING:
        del state["state_dict"][name]
    else:
        state["state_dict"][name] = value
    _refused(tmp_path, state, match)


def test_a_checkpoint_without_weights_is_refused(tmp_path):
    _refused(tmp_path, {**_small_state(), "state_dict": None}, "has no weights")
