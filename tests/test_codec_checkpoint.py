"""Checkpoints hold weights and configuration and are read with weights_only=True."""

import pickle

import pytest
import torch

from rnncodec.codec import CodecConfig, CodecError, RNNCodec, load_checkpoint, model_id, save_checkpoint, warm_start


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


def test_unsafe_or_foreign_files_are_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Exploit()}, evil)
    with pytest.raises(CodecError, match="not a readable checkpoint"):
        load_checkpoint(evil)
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2, 3]) + b"junk")
    with pytest.raises(CodecError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
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
