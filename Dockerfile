# tm-monitor, tm-manager, tmctl and tm-console, with the WebAssembly guests in
# /opt/tm/wasm and the tools the compose lab's routers and hosts run.
#
# Targets:
#   runtime (the default)  built from source on public images
#   local                  the same image from parts already on this machine,
#                          for hosts without registry access: a Debian base
#                          made with debootstrap + `docker import` (LOCAL_BASE,
#                          with the packages below) and the binaries and guests
#                          in target/ (xtask/run compose-lab makes both).

ARG LOCAL_BASE=tm-lab-base:bookworm

FROM ${LOCAL_BASE} AS local
# target/release, or target/debug for the binaries a test run built.
ARG BIN_DIR=target/release
COPY ${BIN_DIR}/tm-monitor ${BIN_DIR}/tm-manager ${BIN_DIR}/tmctl ${BIN_DIR}/tm-console /usr/local/bin/
COPY target/wasm /opt/tm/wasm
CMD ["tmctl", "--help"]

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libpcap-dev clang-14 lld-14 \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add wasm32-unknown-unknown
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p monitor -p manager && cargo xtask guests

FROM debian:bookworm-slim AS runtime
# Keep in step with the packages of the local base (harness::compose::PACKAGES).
RUN apt-get update && apt-get install -y --no-install-recommends \
        libpcap0.8 ca-certificates iproute2 ethtool iperf3 dnsmasq-base curl \
        bind9-dnsutils iputils-ping python3 procps \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tm-monitor /src/target/release/tm-manager /src/target/release/tmctl /src/target/release/tm-console /usr/local/bin/
COPY --from=build /src/target/wasm /opt/tm/wasm
CMD ["tmctl", "--help"]
