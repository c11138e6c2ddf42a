#!/usr/bin/env bash
# The GPU figures in one command (under 8 minutes on one H100 or H200), printed as one JSON object:
#   throughput  paper-size training step (width 1.0, batch 32, 4 iterations): the peer port's plain
#               step, ours fp32, bf16 autocast, bf16 + channels_last, torch.compile, compiled CUDA
#               graphs, the whole step as one CUDA graph (fp32 and bf16); peak memory; the fp32,
#               TF32 and bf16 matmul peaks (benchmarks/train_throughput.py)
#   throughput_batch128  the same at batch 128 (peer, ours, ours-bf16-cl, both whole-step graphs)
#   packing, packing_graphed  4 trials at once on the GPU (a sweep's gpus: 0.25) against one at a
#               time, eager steps and graphed ones (benchmarks/gpu_packing.py)
#   deterministic  two 5-step runs with TrainConfig(deterministic=True) end in identical weights
# Works from a checkout without installing: where `import rnncodec` fails it maps the package's
# folders into a temporary namespace, and installs wheels carried in .whl/ (pytorch-msssim).
#   bash benchmarks/gpu_check.sh            (GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1 for a smoke run)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
OUT_DIR=${OUT:-$(mktemp -d)}
if ! "$PY" -c "import rnncodec.codec.training" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site .whl/*.whl
        export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
    fi
    ns=$(mktemp -d)/ns && mkdir -p "$ns/rnncodec"
    for pkg in codec data evaluation sweeps; do ln -s "$PWD/$pkg" "$ns/rnncodec/$pkg"; done
    export PYTHONPATH=$ns${PYTHONPATH:+:$PYTHONPATH}
fi
if [[ -n "${GPU_CHECK_QUICK:-}" ]]; then
    tput=(--widths 0.125 --steps 1 --rounds 1 --warmup 0 --variants peer ours ours-bf16 --peak-size 256)
    pack=(--trials 2 --steps 2 --width 0.125)
else
    tput=(--widths 1.0 --steps 40 --rounds 2 --warmup 5)
    pack=(--trials 4 --steps 300 --width 1.0)
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" >&2
"$PY" benchmarks/train_throughput.py --device "$DEVICE" "${tput[@]}" >"$OUT_DIR/throughput.json"
echo "throughput done" >&2
"$PY" benchmarks/train_throughput.py --device "$DEVICE" "${tput[@]}" --batch 128 --variants peer ours ours-bf16-cl \
    $([[ $DEVICE == cuda ]] && echo ours-graphed ours-bf16-graphed) >"$OUT_DIR/throughput_batch128.json"
"$PY" benchmarks/gpu_packing.py --device "$DEVICE" "${pack[@]}" >"$OUT_DIR/packing.json"
if [[ $DEVICE == cuda ]]; then
    "$PY" benchmarks/gpu_packing.py --device "$DEVICE" "${pack[@]}" --cuda-graph >"$OUT_DIR/packing_graphed.json"
else
    echo null >"$OUT_DIR/packing_graphed.json"
fi
echo "packing done" >&2
"$PY" - "$DEVICE" >"$OUT_DIR/deterministic.json" <<'EOF'
import json, sys, torch
from rnncodec.codec.model import CodecConfig, RNNCodec
from rnncodec.codec.training import TrainConfig, Trainer

def run():
    torch.manual_seed(0)
    model = RNNCodec(CodecConfig(width=0.25)).to(sys.argv[1])
    trainer = Trainer(model, TrainConfig(iterations=4, total_steps=5, deterministic=True))
    g = torch.Generator().manual_seed(1)
    batches = iter(lambda: torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=g), None)
    losses = trainer.run(batches, 5)
    return losses, [p.detach().cpu() for p in model.parameters()]

(l1, p1), (l2, p2) = run(), run()
print(json.dumps({"losses": l1, "identical_losses": l1 == l2,
                  "identical_weights": all(torch.equal(a, b) for a, b in zip(p1, p2))}))
EOF
"$PY" - "$OUT_DIR" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print(json.dumps({k: json.loads((out / f"{k}.json").read_text()) for k in ("throughput", "throughput_batch128", "packing", "packing_graphed", "deterministic")}, indent=2))
EOF
