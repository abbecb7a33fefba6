# syntax=docker/dockerfile:1
#
# Custody gateway image: a static musl binary on distroless (CA certificates,
# non-root user 65532, no shell). The build step is the same command CI runs
# (`cargo build --release --locked`), so CI proves what this file builds.
#
#   docker build -t custody .
#   docker run -p 8080:8080 -v $PWD/custody.toml:/etc/custody/custody.toml:ro custody

# The builder is glibc Debian cross-compiling to musl: pg_query (PostgreSQL's
# parser, used by the guardrails) generates its bindings with bindgen, which
# dlopens libclang from a build script, and build scripts on an Alpine (musl,
# crt-static) host cannot dlopen. The gateway itself is still a static binary.
FROM rust:1.95-bookworm AS builder
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools libclang-dev \
    && rm -rf /var/lib/apt/lists/* && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
# CI runs the same build for the host target (`cargo build --release --locked`).
RUN cargo build --release --locked --target x86_64-unknown-linux-musl

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=builder /src/target/x86_64-unknown-linux-musl/release/custody /custody
USER nonroot:nonroot
# Cloud Run mounts the config secret here (terraform/), and sets PORT itself.
ENV CUSTODY_CONFIG=/etc/custody/custody.toml \
    PORT=8080
EXPOSE 8080
ENTRYPOINT ["/custody", "serve"]
