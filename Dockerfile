# outbox-relay container image: a static-ish Rust binary on a distroless base.
#   docker build -t outbox-relay .
#   docker run --rm -e RELAY_PG_URL=... -e RELAY_AMQP_URL=... outbox-relay run

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p outbox-relay \
 && cp target/release/outbox-relay /outbox-relay

# distroless: glibc and CA certificates, no shell, runs as uid 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /outbox-relay /usr/local/bin/outbox-relay
# The metrics and health endpoints must be reachable from outside the container.
ENV RELAY_METRICS_ADDR=0.0.0.0:9187
EXPOSE 9187
USER nonroot
ENTRYPOINT ["/usr/local/bin/outbox-relay"]
CMD ["run"]
