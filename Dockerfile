# syntax=docker/dockerfile:1
# reviewq image: build in the Rust image, run in slim Debian with only CA certificates.
#   docker build -t reviewq .
#   docker run --rm -e DATABASE_URL=postgres://... reviewq migrate
# Queries are checked against the committed .sqlx/ data, so the build needs no database.

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build artifacts between builds (BuildKit); the binary
# is copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    SQLX_OFFLINE=true cargo build --release --locked \
    && cp target/release/reviewq /usr/local/bin/reviewq

FROM debian:bookworm-slim
# TLS to GitLab and the LLM endpoint verifies against the system's CA store.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --user-group --uid 10001 --no-create-home --home-dir /nonexistent reviewq
COPY --from=builder /usr/local/bin/reviewq /usr/local/bin/reviewq
USER reviewq
# `reviewq serve --listen 0.0.0.0:8080`
EXPOSE 8080
ENTRYPOINT ["reviewq"]
CMD ["--help"]
