#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then creates a demo store in a temporary directory, mounts
# it, shows the tree and a few reads as a user would, and unmounts.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

demo=$(mktemp -d /tmp/secretfs-demo.XXXXXX)
mnt="$demo/mnt"
mkdir "$mnt"
export SECRETFS_STORE="$demo/store.db"
cleanup() {
  secretfs umount "$mnt" >/dev/null 2>&1 || true
  rm -rf "$demo"
}
trap cleanup EXIT

run() { printf '\n$ %s\n' "$*"; "$@"; }

run secretfs init
printf 'hunter2' | secretfs secret create db-password --from-stdin
printf '{"user":"app","password":"s3cr3t","port":5432,"replicas":["db-1","db-2"]}' \
  | secretfs secret create @api/database --from-stdin --mode 0440
secretfs secret create :staging/api-token --generate 24
STRIPE_KEY=sk_test_4eC39HqLyjWDarjtT1zdp7dc secretfs secret create shop:prod/stripe-key --from env://STRIPE_KEY
run secretfs secret ls
run secretfs mount "$mnt"
run ls -lR "$mnt"
run cat "$mnt/deployment/db-password"; echo
run cat "$mnt/@api/database.d/password"; echo
run cat "$mnt/@api/database.d/replicas/1"; echo
run getfattr -d "$mnt/@api/database"
echo
echo '$ secretfs secret set db-password   # while mounted'
printf 'correct horse' | secretfs secret set db-password --from-stdin
sleep 0.5
run cat "$mnt/deployment/db-password"; echo
run secretfs umount "$mnt"
