# syntax=docker/dockerfile:1
#
# Custody gateway image: a static musl binary on distroless (CA certificates,
# non-root user 65532, no shell). The build step is the same command CI runs
# (`cargo build --release --locked`), so CI proves what this file builds.
#
#   docker build -t custody .
#   docker run -p 8080:8080 -v $PWD/custody.toml:/etc/custody/custody.toml:ro custody

FROM rust:1.95-alpine AS builder
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
# On Alpine the host target is x86_64-unknown-linux-musl, linked statically.
RUN cargo build --release --locked

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=builder /src/target/release/custody /custody
USER nonroot:nonroot
# Cloud Run mounts the config secret here (terraform/), and sets PORT itself.
ENV CUSTODY_CONFIG=/etc/custody/custody.toml \
    PORT=8080
EXPOSE 8080
ENTRYPOINT ["/custody", "serve"]
