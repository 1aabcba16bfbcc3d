# The strata binary in a slim image (used by compose.yaml). librdkafka is built from source by
# rdkafka-sys, which needs a C toolchain, make, and the OpenSSL and zlib headers.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential libssl-dev zlib1g-dev python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin strata

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/strata /usr/local/bin/strata
ENV STRATA_HTTP=0.0.0.0:7070 STRATA_DATA_DIR=/data
VOLUME /data
EXPOSE 7070 5433 50051
ENTRYPOINT ["strata"]
CMD ["serve"]
