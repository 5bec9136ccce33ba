#!/usr/bin/env bash
# The steering and fine-tuning paths on a device: train a small model on the repo's own text, then guided
# sampling (SVDD, SMC with a module:function reward), the remask and planned samplers, infilling, GRPO with
# --resume and its refusal to continue on another kind of device, and sampling the fine-tuned model.
# Needs only torch (+ numpy, tokenizers, safetensors, pyyaml, tqdm) and runs ddlm from src/:
#   bash tools/gpu-smoke.sh            # on a CUDA machine
#   DEV=cpu bash tools/gpu-smoke.sh    # the same on the CPU (the refusal step is then skipped)
# Prints "ok NAME SECONDS" or "FAIL NAME" and the log's tail per step; exits 1 if any step failed.
set -uo pipefail
DEV=${DEV:-cuda}
R=$(mktemp -d /tmp/ddlm-smoke.XXXXXX)
export PYTHONPATH=$PWD/src:$R PYTHONUNBUFFERED=1
cat README.md ARCHITECTURE.md > "$R/corpus.txt"
printf 'def vowels(texts):\n    return [sum(c in "aeiou" for c in t) / max(1, len(t)) for t in texts]\n' > "$R/smoke_reward.py"
fail=0
step() {
  local name=$1; shift; SECONDS=0
  if "$@" > "$R/$name.log" 2>&1; then echo "ok $name ${SECONDS}s"; else echo "FAIL $name"; tail -8 "$R/$name.log"; fail=1; fi
}
S="python3 -m ddlm sample $R/q --n 4 --length 64 --steps 16 --seed 0 --device $DEV --json"
F="python3 -m ddlm finetune $R/q --method grpo --reward smoke_reward:vowels --out $R/g --batch-size 8 --steps 8"
step train    python3 -m ddlm train --preset quick --data "$R/corpus.txt" --max-steps 200 --out "$R/q" --quiet train.device=$DEV
step svdd     $S --reward smoke_reward:vowels --svdd 4
step smc      $S --reward smoke_reward:vowels --smc 4
step remask   $S --sampler remask
step planned  $S --sampler planned --planner top_margin
step infill   python3 -m ddlm sample "$R/q" --n 2 --infill "The [MASK:8] of the [MASK:6]" --seed 0 --device $DEV --json
step grpo     $F --max-steps 2 --device $DEV
step resume   $F --max-steps 3 --device $DEV --resume
if [ "$DEV" != cpu ]; then
  step refused  bash -c "$F --max-steps 4 --device cpu --resume 2>&1 | grep -q 'add --device ${DEV%%:*}'"
fi
step export   python3 -m ddlm export "$R/g" --step 2 --out "$R/g2"
step tuned    python3 -m ddlm sample "$R/g2" --n 2 --length 64 --steps 16 --seed 0 --device $DEV --json
rm -rf "$R"
exit $fail
