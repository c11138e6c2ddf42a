"""The most used public PyTorch port of Toderici et al. 2017, 1zb/pytorch-image-comp-rnn, rebuilt
from its description for comparisons run in the same process as ours (its code is not vendored).

Network (its ``network.py``): the same layers as ours with no biases; each ConvLSTM cell always
runs its hidden convolution, the zero initial states included, in plain ``nn.Conv2d`` (NCHW,
fp32); the decoder ends in ``tanh(conv) / 2`` and the residual is updated as ``res = res - out``.
Training step (its ``train.py``): loss = mean over iterations of mean |residual|, Adam at
lr 5e-4, MultiStepLR halving at epochs 3, 10, 20, 50 and 100. ``width`` scales every channel
count as ours does, so the two can be compared at any size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LR = 5e-4
MILESTONES = (3, 10, 20, 50, 100)  # epochs at which the learning rate halves


class PeerLSTMCell(nn.Module):
    def __init__(self, cin: int, hidden: int, stride: int, hidden_kernel: int):
        super().__init__()
        self.hidden = hidden
        self.conv_ih = nn.Conv2d(cin, 4 * hidden, 3, stride, 1, bias=False)
        self.conv_hh = nn.Conv2d(hidden, 4 * hidden, hidden_kernel, 1, hidden_kernel // 2, bias=False)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h, c = state
        i, f, g, o = (self.conv_ih(x) + self.conv_hh(h)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class PeerCodec(nn.Module):
    """Encoder, binarizer and decoder of the peer port; ``forward`` returns the per-iteration
    reconstructions of ``x`` in [-0.5, 0.5] as ours does."""

    def __init__(self, width: float = 1.0, bits: int = 32):
        super().__init__()

        def ch(n: int) -> int:
            return max(4, 4 * round(n * width / 4))

        e, d = [ch(n) for n in (64, 256, 512, 512)], [ch(n) for n in (512, 512, 256, 128)]
        self.e_conv = nn.Conv2d(3, e[0], 3, 2, 1, bias=False)
        self.encoder = nn.ModuleList(PeerLSTMCell(e[i], e[i + 1], 2, 1) for i in range(3))
        self.b_conv = nn.Conv2d(e[3], bits, 1, bias=False)
        self.d_conv = nn.Conv2d(bits, d[0], 1, bias=False)
        cins = [d[0], d[0] // 4, d[1] // 4, d[2] // 4]
        self.decoder = nn.ModuleList(PeerLSTMCell(cins[i], d[i], 1, k) for i, k in enumerate((1, 1, 3, 3)))
        self.d_out = nn.Conv2d(d[3] // 4, 3, 1, bias=False)

    def forward(self, x: Tensor, iterations: int) -> list[Tensor]:
        n, size = x.shape[0], x.shape[2]
        states = [(x.new_zeros(n, c.hidden, size // s, size // s),) * 2
                  for c, s in zip([*self.encoder, *self.decoder], (4, 8, 16, 16, 8, 4, 2))]
        res, x_hat, out = x, torch.zeros_like(x), []
        for _ in range(iterations):
            y = self.e_conv(res)
            for i, cell in enumerate(self.encoder):
                states[i] = cell(y, states[i])
                y = states[i][0]
            y = torch.tanh(self.b_conv(y))
            if self.training:  # stochastic sign with a straight-through gradient
                y = y + (torch.where(torch.rand_like(y) < (1 + y) / 2, 1.0, -1.0) - y).detach()
            else:
                y = torch.where(y >= 0, 1.0, -1.0)
            y = self.d_conv(y)
            for i, cell in enumerate(self.decoder, start=3):
                states[i] = cell(y, states[i])
                y = F.pixel_shuffle(states[i][0], 2)
            decoded = torch.tanh(self.d_out(y)) / 2
            res = res - decoded
            x_hat = x_hat + decoded
            out.append(x_hat)
        return out


def peer_step(model: PeerCodec, optimizer: torch.optim.Optimizer, pixels: Tensor, iterations: int) -> float:
    """One training step of the peer's recipe on a uint8 batch."""
    x = pixels.float() / 255 - 0.5
    model.train()
    optimizer.zero_grad()
    out = model(x, iterations)
    loss = sum((x - x_hat).abs().mean() for x_hat in out) / iterations
    loss.backward()
    optimizer.step()
    return loss.item()
