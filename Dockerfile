# syntax=docker/dockerfile:1
# Build: docker build -t gorgias-proxy .
# Run:   docker run --rm -p 8080:8080 --env-file .env gorgias-proxy
#        docker run --rm -p 8080:8080 gorgias-proxy --sandbox

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# aws-lc-sys (rustls's crypto) compiles C; gcc and make come with the toolchain image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ make \
 && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY src ./src
COPY crates ./crates
COPY tests/fixtures ./tests/fixtures
COPY benches ./benches
RUN cargo build --release --locked --bin gorgias-proxy --bin gorgias-sim \
 && strip target/release/gorgias-proxy target/release/gorgias-sim

FROM debian:bookworm-slim AS runtime
# CA certificates: reqwest's rustls verifier reads the system trust store to reach Gorgias.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app \
 && mkdir -p /data && chown 10001 /data
COPY --from=build /src/target/release/gorgias-proxy /usr/local/bin/gorgias-proxy
COPY --from=build /src/target/release/gorgias-sim /usr/local/bin/gorgias-sim
USER 10001
# DATA_DIR holds the outbox of asynchronous requests (SQLite): mount a volume there, or accepted
# requests do not survive the container.
ENV LISTEN_ADDR=0.0.0.0:8080 LOG_FORMAT=json DATA_DIR=/data
VOLUME /data
EXPOSE 8080
# No shell or curl needed: the binary probes its own /healthz.
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/gorgias-proxy", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/gorgias-proxy"]
