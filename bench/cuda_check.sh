#!/usr/bin/env bash
# Short CUDA check: fp32/fp16/bf16 training steps with train.py, then sampling; prints img/s figures.
# Usage: bash bench/cuda_check.sh DATA.zip OUTDIR
set -u
DATA=${1:?dataset zip}; OUT=${2:?output dir}
export PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
common="--data=$DATA --arch=ddpmpp --cbase=32 --cres=1,2 --batch=64 --iters=150 --tick=1 --snap=1000 --dump=1000 --lr_rampup=0 --augment=0.12 --seed=0"
for prec in fp32 fp16 bf16; do
  flags=""; [ $prec = fp16 ] && flags="--fp16=1"; [ $prec = bf16 ] && flags="--bf16=1"
  echo "== train $prec"; python3 train.py --outdir=$OUT/$prec --nosubdir $common $flags 2>&1 | grep -E "^tick|Error|error" | tail -3
done
echo "== train ambient fp32"; python3 train.py --outdir=$OUT/amb --nosubdir $common --loss=ambient --sigma_tn=1.0 2>&1 | grep -E "^tick|Error|error" | tail -2
net=$(ls $OUT/fp32/network-snapshot-*.safetensors | tail -1)
echo "== generate 512 images from $net"
start=$(date +%s.%N); python3 generate.py --network=$net --outdir=$OUT/gen --seeds=0-511 --batch=256 2>&1 | tail -1
end=$(date +%s.%N); python3 -c "print('generate: %.1f img/s (incl. start-up)' % (512 / ($end - $start)))"
echo "== per-step training bench on the 32x32 narrow net (EDM reference vs our paths, incl. tf32 via train.py)"
timeout 240 python3 bench/train_speed.py --res=32 --channels=3 --cbase=64 --cres=1,2,2 --batch=64 --dropout=0.13 --modes=ours,fused,bf16,compile,fast --steps=10 --rounds=3 --no-memory 2>&1 | grep -v Warn
echo "== sampling bench (EDM sampler loop vs ours, bf16, compile)"
timeout 180 python3 bench/sample_speed.py --config=narrow-32 --batch=256 --modes=ours,bf16,compile --repeats=3 --no-memory 2>&1 | grep -v Warn
echo "== torchrun with NCCL, 1 process per GPU"
timeout 120 torchrun --standalone --nproc_per_node=$(python3 -c "import torch; print(torch.cuda.device_count())") train.py --outdir=$OUT/ddp --nosubdir $common --iters=20 2>&1 | grep -E "^tick|Error|error" | tail -2
