#!/usr/bin/env bash
# Shard one checkpoint on many machines with a Slurm job array: one task per world rank, all writing
# into one shared directory, then one finalize step that writes manifest.json.
#
#   sbatch --array=0-7 docs/deploy/shard-slurm.sh /shared/ckpt /shared/out    # TP 4 × PP 2 = 8 ranks
#   sbatch --dependency=afterok:<array job id> --wrap \
#       "shardkit reshard --finalize /shared/out"                              # once every task is done
#
# Each task writes rank-<W>/ and rank-<W>/part.json and takes a shared lock on OUT/.shardkit.lock, so
# the tasks run side by side; --finalize takes it exclusively and refuses while a task still writes,
# or names the first rank whose part.json is missing (rerun only that task: it replaces rank-<W>/).
# OUT must be on a file system every node sees (NFS, Lustre, GPFS) with working flock(2).
#SBATCH --job-name=shardkit-shard
#SBATCH --cpus-per-task=2
#SBATCH --mem=2G
#SBATCH --time=01:00:00
set -euo pipefail
SRC=${1:?checkpoint directory}
OUT=${2:?output directory}
TP=${TP:-4}
PP=${PP:-2}
EP=${EP:-1}
RANK=${SLURM_ARRAY_TASK_ID:?run as a Slurm array task}
exec shardkit shard "$SRC" --tp "$TP" --pp "$PP" --ep "$EP" --ranks "$RANK" --out "$OUT"
