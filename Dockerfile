# Two images from one build (scripts/image-check builds and runs both):
#   docker build -t gorgias-proxy .                                   # production: the service only
#   docker build --target sandbox -t gorgias-proxy:sandbox .          # + gorgias-sim and --sandbox
# Run:
#   docker run --rm -p 8080:8080 --env-file .env gorgias-proxy        # a real account
#   docker run --rm -p 8080:8080 gorgias-proxy:sandbox --sandbox      # try it, no account needed
#
# The production image leaves the simulator out (`--no-default-features`): a service that talks to
# merchants' helpdesks has no use for a fake one, and `--sandbox` there says it was built without.

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
# One stage builds both sets, so a builder that builds every stage before its target (the
# classic builder does) compiles the dependencies once. The second build only recompiles the
# service with the `sandbox` feature and the simulator.
RUN mkdir -p /out/production /out/sandbox \
 && cargo build --release --locked --no-default-features --bin gorgias-proxy \
 && strip target/release/gorgias-proxy \
 && cp target/release/gorgias-proxy /out/production/ \
 && cargo build --release --locked --bin gorgias-proxy --bin gorgias-sim \
 && strip target/release/gorgias-proxy target/release/gorgias-sim \
 && cp target/release/gorgias-proxy target/release/gorgias-sim /out/sandbox/

FROM debian:bookworm-slim AS runtime
# CA certificates: reqwest's rustls verifier reads the system trust store to reach Gorgias.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app \
 && mkdir -p /data && chown 10001 /data
USER 10001
# DATA_DIR holds the outbox of asynchronous requests and the Idempotency-Key records (SQLite):
# mount a volume there, or accepted requests do not survive the container.
ENV LISTEN_ADDR=0.0.0.0:8080 LOG_FORMAT=json DATA_DIR=/data
VOLUME /data
EXPOSE 8080
# No shell or curl needed: the binary probes its own /healthz.
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/gorgias-proxy", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/gorgias-proxy"]

# The service and the simulator: `--sandbox`, and compose's `sandbox` profile.
FROM runtime AS sandbox
COPY --from=build /out/sandbox/gorgias-proxy /out/sandbox/gorgias-sim /usr/local/bin/

# The default target (last): the service alone.
FROM runtime AS production
COPY --from=build /out/production/gorgias-proxy /usr/local/bin/gorgias-proxy
