#!/usr/bin/env bash
# Installs everything secretfs needs on Debian 12: system packages, then .venv with
# the package and its test tools. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(
  fuse3 libfuse3-dev pkg-config        # the FUSE library pyfuse3 builds against
  gcc python3 python3-dev python3-venv # building pyfuse3 from source
  attr                                 # getfattr, used by the tests and the docs
  runc busybox-static                  # the container test
  openssh-client                       # ssh-keygen: the git SSH key tests
  inotify-tools                        # inotifywait: the watching tests
  systemd                              # systemd-analyze verify: the unit file test
  etcd-server etcd-client              # the etcd backend's tests: a 3-member cluster
  openssl git                          # the docs' commands (tests/test_docs_run.py)
  zsh fish                             # the completion scripts' syntax test
  libsodium-dev                        # the sealed-read tests: a C client opens the boxes
  curl protobuf-compiler               # the resolver socket's tests: real clients (curl, protoc)
  nginx                                # the TLS rotation test: reloads during rotations
)

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  "${sudo_cmd[@]}" apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends \
    "${missing[@]}" >&2
fi

PYTHON=${PYTHON:-python3}
stamp=.venv/.secretfs-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing secretfs and its test tools into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -e '.[test,docs]' >&2
  echo "$want" > "$stamp"
fi
