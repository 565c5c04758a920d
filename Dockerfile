# tm-monitor, tm-manager and tmctl, with the WebAssembly guests in /opt/tm/wasm.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libpcap-dev clang-14 lld-14 \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add wasm32-unknown-unknown
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p monitor -p manager && cargo xtask guests

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libpcap0.8 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tm-monitor /src/target/release/tm-manager /src/target/release/tmctl /usr/local/bin/
COPY --from=build /src/target/wasm /opt/tm/wasm
CMD ["tmctl", "--help"]
