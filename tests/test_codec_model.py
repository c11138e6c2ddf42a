"""The network: sizes, bit counts, the binarizer, the cells, and that every variant learns."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rnncodec.codec import CELLS, MODES, CodecConfig, CodecError, RNNCodec, train_step
from rnncodec.codec.model import Binarizer, Conv2d, ConvGRUCell, tanh
from rnncodec.codec.options import LOSSES


def test_paper_size_lstm_has_the_published_parameter_count():
    total = sum(p.numel() for p in RNNCodec(CodecConfig(cell="lstm")).parameters())
    assert total == 35_456_800  # the public PyTorch port, which has no biases either
    with_biases = RNNCodec(CodecConfig(cell="lstm", bias=True))
    weights = sum(p.numel() for p in with_biases.parameters() if p.dim() > 1)
    assert weights == total
    assert sum(p.numel() for p in with_biases.parameters()) - weights == 11_363  # a bias per gate and plain conv


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [(32, 32), (48, 80)])
def test_each_iteration_emits_exactly_one_eighth_bit_per_pixel(cell, mode, size):
    model = RNNCodec(CodecConfig(cell=cell, mode=mode, width=0.125))
    x = torch.rand(2, 3, *size) - 0.5
    out = model(x, iterations=3)
    assert [len(out[k]) for k in ("x_hat", "codes", "residuals")] == [3, 3, 3]
    for b, x_hat, r in zip(out["codes"], out["x_hat"], out["residuals"]):
        assert b.shape == (2, 32, size[0] // 16, size[1] // 16)
        assert b[0].numel() == size[0] * size[1] // 8  # 0.125 bpp; 128 bits per 32×32 patch
        assert set(b.unique().tolist()) <= {-1.0, 1.0}
        assert x_hat.shape == x.shape
        torch.testing.assert_close(r, x - x_hat)


def test_width_scales_every_channel_count_but_the_code_bits():
    model = RNNCodec(CodecConfig(width=0.25))
    assert model.encoder.conv.out_channels == 16
    assert model.binarizer.conv.out_channels == 32
    assert model.decoder.conv_in.out_channels == 128
    assert [r.conv_h.in_channels for r in model.decoder.rnns] == [128, 128, 64, 32]


def test_inputs_and_configurations_are_checked():
    with pytest.raises(CodecError, match="multiples of 16"):
        RNNCodec(CodecConfig(width=0.125))(torch.zeros(1, 3, 30, 32), 1)
    with pytest.raises(CodecError, match="iterations must be in 1..24"):
        RNNCodec(CodecConfig(width=0.125))(torch.zeros(1, 3, 32, 32), 25)
    # training may run past the 16 iterations a file holds
    assert len(RNNCodec(CodecConfig(width=0.125))(torch.zeros(1, 3, 32, 32), 20)["codes"]) == 20
    with pytest.raises(CodecError, match="cell 'rnn' is not one of lstm, gru"):
        CodecConfig(cell="rnn")
    with pytest.raises(CodecError, match="unknown codec configuration keys"):
        CodecConfig.from_dict({"cells": "lstm"})
    assert CodecConfig.from_dict(CodecConfig(width=0.5).to_dict()) == CodecConfig(width=0.5)
    with pytest.raises(CodecError, match=r"gain_growth 3 is outside \[1, 2\]"):
        CodecConfig(gain_growth=3)
    with pytest.raises(CodecError, match="gain_growth needs a mode that adds residuals"):
        CodecConfig(mode="one-shot", gain_growth=1.1)


def test_gain_growth_scales_what_the_encoder_sees_and_divides_what_the_decoder_adds():
    """Fixed residual scaling: with γ = 1.5 the encoder gets rₜ₋₁·γᵗ⁻¹ and x̂ₜ = x̂ₜ₋₁ + s·D(bₜ)/γᵗ⁻¹;
    a model without the setting writes the same configuration as before it existed."""
    assert "gain_growth" not in CodecConfig().to_dict()
    assert CodecConfig.from_dict(CodecConfig(gain_growth=1.5).to_dict()).gain_growth == 1.5
    torch.manual_seed(0)
    model = RNNCodec(CodecConfig(width=0.125, gain_growth=1.5)).eval()
    x = torch.rand(2, 3, 32, 32) - 0.5
    seen = []
    model.encoder.conv.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    out = model(x, 3)
    plain = RNNCodec(CodecConfig(width=0.125)).eval()
    plain.load_state_dict(model.state_dict())
    state, previous = plain.initial_state(), torch.zeros_like(x)
    for t in range(3):
        assert torch.allclose(seen[t], (x - previous) * 1.5**t, atol=1e-6), t
        increment = plain.decoder(out["codes"][t], state["rnn"])
        assert torch.allclose(out["x_hat"][t], previous + 0.5 * increment / 1.5**t, atol=1e-6), t
        previous = out["x_hat"][t]


def test_output_scale_halves_each_increment_and_older_configurations_keep_the_full_one():
    """New models add D(bₜ)/2 per iteration (the 1zb port's tanh/2); a stored configuration from before the
    setting existed means 1 and writes itself, and so hashes, exactly as before."""
    old = {k: v for k, v in CodecConfig(bias=True).to_dict().items() if k != "output_scale"}
    assert CodecConfig.from_dict(old).output_scale == 1.0
    assert CodecConfig.from_dict(old).to_dict() == old
    assert CodecConfig().output_scale == 0.5 and not CodecConfig().bias
    assert CodecConfig.from_dict(CodecConfig().to_dict()) == CodecConfig()
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) - 0.5
    half = RNNCodec(CodecConfig(width=0.125)).eval()
    full = RNNCodec(CodecConfig(width=0.125, output_scale=1.0)).eval()
    full.load_state_dict(half.state_dict())
    torch.testing.assert_close(half(x, 1)["x_hat"][0], full(x, 1)["x_hat"][0] / 2)
    with pytest.raises(CodecError, match=r"output_scale 0 is outside \(0, 1\]"):
        CodecConfig(output_scale=0)


def test_binarizer_is_stochastic_and_unbiased_in_training_and_sign_at_evaluation():
    torch.manual_seed(0)
    binarizer = Binarizer(4, 4, bias=False)
    x = torch.linspace(-2, 2, 4 * 64 * 64).reshape(1, 4, 64, 64)
    y = torch.tanh(binarizer.conv(x))
    samples = torch.stack([binarizer(x) for _ in range(1000)])
    assert set(samples.unique().tolist()) == {-1.0, 1.0}
    assert (samples.mean(0) - y).abs().mean() < 0.04  # E[b] = tanh(W x); sampling error ≈ 0.025
    binarizer.eval()
    assert torch.equal(binarizer(x), torch.where(y >= 0, 1.0, -1.0))
    with torch.no_grad():
        binarizer.conv.weight.zero_()
    assert torch.equal(binarizer(x), torch.ones_like(x))  # 0 maps to +1


def test_gradients_pass_the_binarizer_to_the_encoder():
    model = RNNCodec(CodecConfig(width=0.125)).train()
    out = model(torch.rand(2, 3, 32, 32) - 0.5, iterations=2)
    sum(r.abs().mean() for r in out["residuals"]).backward()
    for name, p in model.encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.binarizer.conv.weight.grad.abs().sum() > 0


def test_gru_reset_gate_multiplies_the_hidden_state_before_its_convolution():
    torch.manual_seed(0)
    cell = ConvGRUCell(3, 4, kernel=3, stride=1, hidden_kernel=3, bias=True)
    x, h = torch.randn(1, 3, 8, 8), torch.randn(1, 4, 8, 8)
    wx, bx = cell.conv_x.weight, cell.conv_x.bias
    z = torch.sigmoid(F.conv2d(x, wx[:4], bx[:4], padding=1) + F.conv2d(h, cell.conv_h.weight[:4], padding=1))
    r = torch.sigmoid(F.conv2d(x, wx[4:8], bx[4:8], padding=1) + F.conv2d(h, cell.conv_h.weight[4:], padding=1))
    n = torch.tanh(F.conv2d(x, wx[8:], bx[8:], padding=1) + F.conv2d(r * h, cell.conv_hn.weight, padding=1))
    out, state = cell(x, h)
    torch.testing.assert_close(out, (1 - z) * n + z * h)
    assert state is out


def _smooth_batch() -> torch.Tensor:
    torch.manual_seed(0)
    noise = torch.randint(0, 256, (4, 3, 32, 32)).float()
    return F.avg_pool2d(noise, 5, 1, 2).round().to(torch.uint8)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("mode", MODES)
def test_every_cell_and_mode_overfits_a_fixed_batch(cell, mode):
    """Stated factor: the mean L1 loss of the last 10 of 150 steps is at most 1/1.5 of the first
    (about the mean absolute pixel, as the untrained decoder adds little); measured factors are 1.9–3.8."""
    pixels = _smooth_batch()
    model = RNNCodec(CodecConfig(cell=cell, mode=mode, width=0.125))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = [train_step(model, optimizer, pixels, iterations=2, loss="l1") for _ in range(150)]
    assert sum(losses[-10:]) / 10 < losses[0] / 1.5, (losses[0], losses[-10:])


@pytest.mark.parametrize(("loss", "factor"), [("mse", 2.0), ("ms-ssim", 1.15)])
def test_the_other_losses_train_too(loss, factor):
    pixels = _smooth_batch()
    model = RNNCodec(CodecConfig(cell="gru", mode="one-shot", width=0.125))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = [train_step(model, optimizer, pixels, iterations=2, loss=loss) for _ in range(150)]
    assert sum(losses[-10:]) / 10 < losses[0] / factor, (losses[0], losses[-10:])


def test_psnr_loss_is_the_negative_sum_of_each_iterations_psnr_and_trains():
    from rnncodec.codec.losses import codec_loss

    x = torch.rand(4, 3, 32, 32) - 0.5
    out = {"residuals": [torch.full_like(x, 0.1), torch.full_like(x, 0.01)]}
    assert codec_loss("psnr", x, out).item() == pytest.approx(-(20.0 + 40.0), abs=1e-4)
    pixels = _smooth_batch()
    model = RNNCodec(CodecConfig(width=0.125, gain_growth=1.2))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = [train_step(model, optimizer, pixels, iterations=2, loss="psnr") for _ in range(150)]
    assert sum(losses[-10:]) / 10 < losses[0] - 2 * 3.0, (losses[0], losses[-10:])  # ≥ 3 dB per iteration


def test_loss_growth_weighs_later_iterations_more_and_keeps_the_total_weight():
    from rnncodec.codec.losses import codec_loss, iteration_weights
    from rnncodec.codec.training import TrainConfig, Trainer

    weights = iteration_weights(16, 1.25)
    assert sum(weights) == pytest.approx(16) and weights[15] / weights[0] == pytest.approx(1.25 ** 15)
    assert iteration_weights(3) == [1.0, 1.0, 1.0]
    x = torch.zeros(2, 3, 32, 32)
    out = {"residuals": [torch.full_like(x, 0.2), torch.full_like(x, -0.1)]}
    assert codec_loss("l1", x, out, 1.0).item() == pytest.approx(0.3)
    assert codec_loss("l1", x, out, 2.0).item() == pytest.approx(2 / 3 * 0.2 + 4 / 3 * 0.1)
    with pytest.raises(CodecError, match=r"loss_growth 3 is outside \[0.5, 2\]"):
        TrainConfig(loss_growth=3)
    model = RNNCodec(CodecConfig(width=0.125))
    trainer = Trainer(model, TrainConfig(iterations=2, loss_growth=1.5, lr=3e-3, total_steps=60))
    pixels = _smooth_batch()
    losses = trainer.run(iter(lambda: pixels, None), 60)
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0], (losses[0], losses[-5:])


def test_trainer_builds_the_configured_optimizer_schedule_and_determinism():
    from rnncodec.codec.training import TrainConfig, Trainer

    model = RNNCodec(CodecConfig(width=0.125))
    try:
        trainer = Trainer(model, TrainConfig(optimizer="sgd", lr=0.1, lr_schedule="step", total_steps=3,
                                             deterministic=True))
        assert torch.are_deterministic_algorithms_enabled()
        assert isinstance(trainer.optimizer, torch.optim.SGD)
        trainer.run(iter([_smooth_batch()] * 3), 3)
        assert trainer.steps == 3 and trainer.samples_seen == 12 and trainer.lr == pytest.approx(0.01)
    finally:
        Trainer(model, TrainConfig())
    assert not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(CodecError, match="optimizer 'lion'"):
        TrainConfig(optimizer="lion")


def test_cuda_graph_is_ignored_on_the_cpu_refused_with_sgd_and_its_checkpoints_load_either_way():
    from rnncodec.codec.training import TrainConfig, Trainer

    batches = [_smooth_batch()] * 4
    runs = []
    for graph in (False, True):
        torch.manual_seed(0)
        trainer = Trainer(RNNCodec(CodecConfig(width=0.125)), TrainConfig(iterations=2, total_steps=4,
                                                                          lr_schedule="cosine", cuda_graph=graph))
        assert not trainer.graphed
        runs.append((trainer.run(iter(batches), 2), trainer))
    assert runs[0][0] == runs[1][0]
    resumed = runs[0][1]
    resumed.load_state_dict(runs[1][1].state_dict())
    assert isinstance(resumed.optimizer.param_groups[0]["lr"], float)
    assert resumed.lr == pytest.approx(5e-4 * 0.5 * (1 + math.cos(math.pi * 2 / 4)))
    with pytest.raises(CodecError, match="cuda_graph needs the adam or adamw"):
        TrainConfig(optimizer="sgd", cuda_graph=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_a_graphed_step_learns_follows_the_schedule_and_takes_other_batch_shapes():
    """The factor as in the overfitting test above (eagerly on the CPU: 1.73 with this schedule)."""
    from rnncodec.codec.training import GraphedStep, TrainConfig, Trainer

    torch.manual_seed(0)
    model = RNNCodec(CodecConfig(width=0.125)).cuda()
    config = TrainConfig(iterations=2, total_steps=150, lr=3e-3, lr_schedule="step", cuda_graph=True, amp=True)
    trainer = Trainer(model, config)
    assert trainer.graphed and isinstance(trainer.optimizer.param_groups[0]["lr"], torch.Tensor)
    batch = _smooth_batch()
    losses = trainer.run(iter([batch] * 10), 10)
    before = [p.detach().clone() for p in model.parameters()]
    losses += trainer.run(iter([batch[:3]] + [batch] * 139), 140)  # one batch of another shape: eager
    assert isinstance(trainer._train_step, GraphedStep) and trainer._train_step.graph is not None
    assert not any(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert sum(losses[-10:]) / 10 < losses[0] / 1.5, (losses[0], losses[-10:])
    assert float(trainer.optimizer.param_groups[0]["lr"]) == pytest.approx(3e-4)
    eager = Trainer(RNNCodec(CodecConfig(width=0.125)).cuda(), TrainConfig(iterations=2, total_steps=150))
    eager.load_state_dict(trainer.state_dict())
    assert isinstance(eager.optimizer.param_groups[0]["lr"], float) and eager.lr == pytest.approx(3e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_under_a_cuda_graph_as_it_does_eagerly(loss):
    """ms-ssim once failed capture (a tensor built from Python floats is a host-to-device copy)."""
    from rnncodec.codec.training import TrainConfig, Trainer

    runs = []
    for graph in (False, True):
        torch.manual_seed(0)
        trainer = Trainer(RNNCodec(CodecConfig(width=0.125)).cuda(),
                          TrainConfig(iterations=2, loss=loss, total_steps=4, cuda_graph=graph))
        runs.append(trainer.run(iter([_smooth_batch()] * 4), 4))
    assert runs[1] == pytest.approx(runs[0], rel=1e-4, abs=1e-5)


def test_bf16_autocast_runs_where_the_cpu_has_it_and_still_learns():
    from rnncodec.codec.training import TrainConfig, Trainer, bf16_native

    batch, curves = _smooth_batch(), {}
    for amp in (False, True):
        torch.manual_seed(0)
        model = RNNCodec(CodecConfig(width=0.125))
        trainer = Trainer(model, TrainConfig(iterations=2, lr=3e-3, lr_schedule="none", amp=amp))
        assert trainer.amp == (amp and bf16_native(torch.device("cpu")))
        curves[amp] = trainer.run(iter([batch] * 80), 80)
        assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast keeps fp32 weights
    fp32, bf16 = (np.mean(curves[amp][-10:]) for amp in (False, True))
    assert all(map(math.isfinite, curves[True])) and bf16 < 0.8 * curves[True][0] and bf16 < 1.15 * fp32, (fp32, bf16, curves[True][0])


@pytest.mark.parametrize("cell", CELLS)
def test_under_bf16_autocast_the_reconstruction_and_the_cell_states_stay_fp32(cell):
    model = RNNCodec(CodecConfig(width=0.125, cell=cell)).eval()
    x = torch.rand(2, 3, 32, 32) - 0.5
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, 4)
        rnn = model.decoder.rnns[0]
        _, state = rnn(torch.randn(1, rnn.conv_x.in_channels, 2, 2), None)
        _, state = rnn(torch.randn(1, rnn.conv_x.in_channels, 2, 2), state)
    # bf16 holds x̂ ≈ 0.4 to 2⁻⁹, half a grey level: late iterations' increments would be rounded away
    assert all(x_hat.dtype == torch.float32 for x_hat in out["x_hat"])
    assert all(s.dtype == torch.float32 for s in (state if cell == "lstm" else [state]))


@pytest.mark.parametrize("cin,cout,k,stride,side,bias,product", [
    (256, 512, 3, 2, 4, True, True), (128, 1024, 3, 1, 2, False, True), (1024, 1024, 1, 1, 4, True, True),
    (256, 512, 3, 2, 8, True, True), (256, 512, 3, 1, 3, True, True),  # odd side
    (256, 448, 3, 1, 2, True, False), (4, 8, 3, 1, 16, False, False),  # under 2²⁰ weights; large map
])
def test_small_map_convolution_matches_the_library_forward_and_backward(cin, cout, k, stride, side, bias, product,
                                                                         monkeypatch):
    library = []
    monkeypatch.setattr(torch.nn.Conv2d, "_conv_forward",
                        lambda self, *a, f=torch.nn.Conv2d._conv_forward: library.append(self) or f(self, *a))
    torch.manual_seed(0)
    ours = Conv2d(cin, cout, k, stride, k // 2, bias=bias).double()
    ref = torch.nn.Conv2d(cin, cout, k, stride, k // 2, bias=bias).double()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(5, cin, side, side, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = ours(x), ref(x_ref)
    assert (ours not in library) == product  # the matrix product only for small maps of large layers
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad)
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


@pytest.mark.parametrize("bias", [False, True])
def test_a_one_image_1x1_convolution_is_the_librarys_forward_and_backward(bias, monkeypatch):
    library = []
    monkeypatch.setattr(torch.nn.Conv2d, "_conv_forward",
                        lambda self, *a, f=torch.nn.Conv2d._conv_forward: library.append(self) or f(self, *a))
    torch.manual_seed(0)
    ours = Conv2d(8, 3, 1, bias=bias).double()
    ref = torch.nn.Conv2d(8, 3, 1, bias=bias).double()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(1, 8, 20, 36, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = ours(x), ref(x_ref)
    assert ours not in library and y.is_contiguous()
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad)
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    ours(torch.randn(2, 8, 4, 4, dtype=torch.float64))
    assert ours in library  # batches keep the library's convolution


def test_one_image_1x1_convolutions_sum_alike_at_any_thread_count():
    # oneDNN split this layer's sums (an E-RNN's hidden convolution on a Kodak image) differently on 1 and 2
    # threads, so files and decoded pixels depended on the thread count
    torch.manual_seed(0)
    conv = Conv2d(128, 512, 1, bias=False)
    x = torch.randn(1, 128, 64, 96)
    threads, outs = torch.get_num_threads(), []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.no_grad():
                outs.append(conv(x))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(*outs)


def test_the_cpu_tanh_is_torchs_within_float_rounding_in_value_and_gradient():
    x = torch.linspace(-12, 12, 20001, requires_grad=True)
    y = tanh(x)
    y.backward(torch.ones_like(y))
    reference = torch.tanh(x.detach())
    assert (y.detach() - reference).abs().max() < 3e-7
    assert torch.allclose(x.grad, 1 - reference.square(), atol=1e-6)
    assert tanh(torch.tensor([-30.0, 0.0, 30.0])).tolist() == [-1.0, 0.0, 1.0]
    small = torch.full((8,), 1e-3, dtype=torch.bfloat16)
    assert torch.equal(tanh(small), torch.tanh(small))  # bf16 keeps torch's kernel: 2σ(2x)−1 would lose it
