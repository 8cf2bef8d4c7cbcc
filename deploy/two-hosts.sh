#!/usr/bin/env bash
# Multi-worker training on two hosts, without an orchestrator: run this on each host.
#
#   host-a$ deploy/two-hosts.sh 0      # worker 0, the chief: writes models/classifier
#   host-b$ deploy/two-hosts.sh 1      # worker 1
#
# Both hosts need: the same checkout and environment (make venv), the data stage outputs
# (dvc pull data/processed), the port open between them, and a backup folder both can
# read (NFS or similar) so that a restarted job resumes. Each waits for the other at its
# first all-reduce; if either dies, stop and restart both: training resumes from the last
# finished epoch. Try it on one machine: HOST_A=localhost:23456 HOST_B=localhost:23457.
set -euo pipefail
INDEX="${1:?usage: two-hosts.sh INDEX (0 on the first host, 1 on the second)}"
HOST_A="${HOST_A:-host-a.example.com:2222}"   # host:port of worker 0
HOST_B="${HOST_B:-host-b.example.com:2222}"   # host:port of worker 1
BACKUP_DIR="${BACKUP_DIR:-/shared/maas/train-backup}"
export TF_CONFIG="{\"cluster\": {\"worker\": [\"$HOST_A\", \"$HOST_B\"]},
                   \"task\": {\"type\": \"worker\", \"index\": $INDEX}}"
cd "$(dirname "$0")/.."
exec .venv/bin/maas train --task --strategy multi_worker --params-file params.yaml \
    --backup-dir "$BACKUP_DIR"
