#!/usr/bin/env bash
# Build the tiergate image from the root Dockerfile and prove that it serves.
#
#   deploy/image.sh build [TAG]        docker build, or buildah bud where there is no Docker engine
#   deploy/image.sh smoke DIR [TAG]    run the image over a quickstart directory DIR (tiergate.yaml and its models):
#                                      the user it runs as, /healthz, /readyz, one classify, its HEALTHCHECK command
#
# Environment (all optional):
#   BASE_IMAGE    the Python base (default python:3.11-slim-bookworm; a CUDA base: see the Dockerfile's header)
#   TORCH_INDEX   the index torch comes from (default the CPU wheels of download.pytorch.org)
#   WHEELS_DIR    a folder of wheels (a torch wheel kept on disk) mounted into the build as /wheels (buildah only)
#   CA_BUNDLE     a CA bundle for a TLS-intercepting proxy in front of the index, mounted likewise (buildah only)
#   LOCAL_BASE=1  build the base from Debian's archive with debootstrap instead of pulling it (no registry here)
#
# Where a registry is out of reach but Debian's archive and PyPI are not (this project's CI machine), the whole
# build runs as: LOCAL_BASE=1 WHEELS_DIR=/opt/wheels CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
#                TORCH_INDEX=https://pypi.org/simple deploy/image.sh build
# docs/deploy.md ("The image") records what that printed.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-}; shift || true

engine() {
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker
  elif command -v buildah >/dev/null; then echo buildah
  else echo "no Docker engine and no buildah (apt-get install buildah)" >&2; exit 2; fi
}

local_base() { # a Debian bookworm base with python3 and venv, built from the archive, tagged localhost/tiergate-base
  local tag=localhost/tiergate-base:bookworm
  if buildah inspect "$tag" >/dev/null 2>&1; then echo "$tag"; return; fi
  command -v debootstrap >/dev/null || { echo "LOCAL_BASE=1 needs debootstrap (apt-get install debootstrap)" >&2; exit 2; }
  local root; root=$(mktemp -d)
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" \
    http://deb.debian.org/debian >&2
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  local c; c=$(buildah from scratch)
  buildah copy "$c" "$root" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd python3 "$c"
  buildah commit -q "$c" "$tag" >/dev/null
  buildah rm "$c" >/dev/null; rm -rf "$root"
  echo "$tag"
}

build() {
  local tag=${1:-localhost/tiergate:latest} eng; eng=$(engine)
  local args=()
  local base=${BASE_IMAGE:-}
  if [ "${LOCAL_BASE:-0}" = 1 ]; then
    [ "$eng" = buildah ] || { echo "LOCAL_BASE=1 works with buildah only" >&2; exit 2; }
    base=$(local_base)
  fi
  [ -n "$base" ] && args+=(--build-arg "BASE_IMAGE=$base")
  [ -n "${TORCH_INDEX:-}" ] && args+=(--build-arg "TORCH_INDEX=$TORCH_INDEX")
  if [ "$eng" = docker ]; then
    docker build "${args[@]}" -t "$tag" .
  else
    [ -n "${WHEELS_DIR:-}" ] && args+=(-v "$(realpath "$WHEELS_DIR"):/wheels:ro" --build-arg PIP_FIND_LINKS=/wheels)
    [ -n "${CA_BUNDLE:-}" ] && args+=(-v "$(realpath "$CA_BUNDLE"):/etc/ssl/tiergate-build-ca.crt:ro"
                                      --build-arg PIP_CERT=/etc/ssl/tiergate-build-ca.crt)
    # docker format: the OCI format has no HEALTHCHECK
    buildah bud --format docker --isolation chroot --layers=false "${args[@]}" -t "$tag" .
  fi
  echo "built $tag with $eng"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

smoke() { # run the image's tiergate over a copy of DIR, on 127.0.0.1 only, and check it from outside
  local dir=${1:?usage: deploy/image.sh smoke QUICKSTART_DIR [TAG]} tag=${2:-localhost/tiergate:latest}
  [ -f "$dir/tiergate.yaml" ] || { echo "$dir/tiergate.yaml: missing (run tiergate quickstart --no-serve first)" >&2; exit 2; }
  # globals: the EXIT trap runs after this function has returned
  work=$(mktemp -d); cp -a "$dir"/. "$work"/; rm -f "$work"/decisions.db*
  pid=""; ctr=$(buildah from "$tag")
  trap 'set +e; if [ -n "$pid" ]; then kill -- "-$pid" 2>/dev/null; wait "$pid" 2>/dev/null; fi; buildah rm "$ctr" >/dev/null || echo "could not remove container $ctr" >&2; rm -rf "$work"' EXIT
  local port; port=$(free_port)
  local uid; uid=$(buildah run --isolation chroot "$ctr" -- id -u)
  chown -R "$uid" "$work"
  echo "image user: uid $uid"; [ "$uid" != 0 ] || { echo "FAIL  the image runs as root" >&2; exit 1; }
  # its own process group, so that the EXIT trap stops the server and the tier workers it spawns
  setsid buildah run --isolation chroot -v "$work:/work" "$ctr" -- \
    tiergate serve --config /work/tiergate.yaml --host 127.0.0.1 --port "$port" > "$work/serve.log" 2>&1 &
  pid=$!
  local t0=$SECONDS
  until curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { echo "FAIL  the server exited:"; tail -n 20 "$work/serve.log"; exit 1; }
    [ $((SECONDS - t0)) -lt 300 ] || { echo "FAIL  not ready in 300 s"; tail -n 20 "$work/serve.log"; exit 1; }
    sleep 1
  done
  echo "ready in $((SECONDS - t0)) s"
  curl -fsS "http://127.0.0.1:$port/healthz"; echo
  curl -fsS -H 'content-type: application/json' -d '{"texts": ["Subject: meeting moved to 3pm\n\nSee you there."]}' \
    "http://127.0.0.1:$port/v1/classify"; echo
  # the image's own HEALTHCHECK command, run inside the container against this port
  local probe; probe=$(buildah inspect --type image "$tag" | python3 -c '
import json, sys
hc = (json.load(sys.stdin).get("Docker", {}).get("config") or {}).get("Healthcheck") or {}
t = hc.get("Test") or []
if not t: sys.exit("the image has no HEALTHCHECK (built in the OCI format?)")
print(t[1] if t[0] == "CMD-SHELL" else " ".join(t[1:]))')
  echo "HEALTHCHECK $probe"
  buildah run --isolation chroot "$ctr" -- sh -c "${probe//8080/$port}" && echo "HEALTHCHECK passes" \
    || { echo "FAIL  HEALTHCHECK"; exit 1; }
}

case "$cmd" in
  build) build "$@" ;;
  smoke) smoke "$@" ;;
  *) sed -n '2,8p' "$0"; exit 2 ;;
esac
