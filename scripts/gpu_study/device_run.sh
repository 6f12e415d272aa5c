#!/bin/bash
# One device call: environment, the CUDA test, and the study points that the CPU cannot finish this sitting,
# each point a sweep worker on the GPU (claims split them), stopped at a deadline; the stores come back in $OUT.
set -u
D=$PWD/.devcarry  # prepared by scripts/gpu_study/prepare.py
DEV=${DEV:-cuda}
DEADLINE=${DEADLINE:-400}
export PYTHONUNBUFFERED=1 CAPSLIB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=${PY:-python3}
T0=$(date +%s)
for s in src_old src_head; do git -C $D/$s reset -q --hard 2>>$OUT/setup.txt || echo "no git reset in $s" >>$OUT/setup.txt; done
mkdir -p /tmp/dv/data && cp -r $D/data/* /tmp/dv/data/ && gunzip -kf /tmp/dv/data/FashionMNIST/raw/*.gz
export CAPSLIB_DATA=/tmp/dv/data
rm -rf /tmp/dv/ck /tmp/dv/res && mkdir -p /tmp/dv/ck /tmp/dv/res && cp -r $D/ckpt/collapse_plateau /tmp/dv/ck/
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc; lscpu | grep "Model name";
  $PY -c "import torch,torchvision;print(torch.__version__,torchvision.__version__,torch.cuda.is_available() and torch.cuda.get_device_name())"; } >>$OUT/setup.txt 2>&1
worker () {  # name src experiment only-labels [extra args]
  local name=$1 src=$2 exp=$3 only=$4; shift 4
  (cd $D/$src && CAPSLIB_ONLY="$only" PYTHONPATH=$D/$src timeout $DEADLINE $PY $D/only_sweep.py sweep $exp --profile cpu \
     --seeds 3 --set train.device=$DEV --results /tmp/dv/res --checkpoints /tmp/dv/ck/$exp "$@" \
     >>/tmp/dv/$name.log 2>&1) &
}
NP=${NP:-12}; NR=${NR:-9}
for i in $(seq 1 $NP); do worker plateau$i src_old collapse_plateau "${PONLY:-random channels|highest-CI|no CCM|remedy}"; sleep 0.5; done
for i in $(seq 1 $NR); do worker deep$i src_head remedies_deep "squash bias|residual|Efficient"; sleep 0.5; done
# the CUDA test of the fused-kernel file while the workers run (the fused kernel is CPU-only; the test checks the CUDA path)
if [ "$DEV" = cuda ] && [ -z "${SKIPTEST:-}" ]; then
  (cd $D/src_head && timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_fused_routing.py -k "cuda or CUDA" -rs) >$OUT/cuda_test.txt 2>&1
  (cd $D/src_head && timeout 150 $PY -m pytest -q -p no:cacheprovider --noconftest tests/test_fused_routing.py -k "cuda or CUDA" -rs) >>$OUT/cuda_test.txt 2>&1
fi
wait
echo "workers done after $(( $(date +%s) - T0 )) s" >>$OUT/setup.txt
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv >>$OUT/setup.txt 2>&1
cp /tmp/dv/res/collapse_plateau/cpu.csv $OUT/collapse_plateau_gpu.csv 2>>$OUT/setup.txt
cp /tmp/dv/res/remedies_deep/cpu.csv $OUT/remedies_deep_gpu.csv 2>>$OUT/setup.txt
tail -n 30 /tmp/dv/*.log >$OUT/workers_tail.txt 2>&1
echo "total $(( $(date +%s) - T0 )) s" >>$OUT/setup.txt
