# Postern: one image with both binaries (control-plane, data-plane) and admin-cli.
#   docker build -t postern .
# Multi-stage: the toolchain stays in the builder; the runtime image is Debian slim with the
# binaries, CA certificates and a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# protoc comes from the protoc-bin-vendored build-dependency (scripts/protoc), no apt needed.
RUN cargo build --release --locked --bins \
    && mkdir /out \
    && cp target/release/control-plane target/release/data-plane target/release/admin-cli /out/

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/postern --create-home postern
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/postern
# Data planes: proxy 9080, status 9091 (/healthz, /readyz, /metrics).
# Control planes: Admin API 9180 (and /metrics), sync 9280.
EXPOSE 9080 9091 9180 9280
ENTRYPOINT ["/usr/local/bin/data-plane"]
