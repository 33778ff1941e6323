"""The Debezium peer of relay-bench (written to a temporary directory and
run by `relay-bench --with-debezium` in a virtualenv of its own).

It runs the Debezium 3.6 embedded engine (PyPI: pydbzengine, which bundles
the engine, the Postgres connector and the Outbox EventRouter, and runs
them in a JVM through JPype) on a slot that already holds the backlog, with
the EventRouter configured for sql/outbox.sql's columns, and hands each
batch to one of two sinks:

- rabbitmq: publishes every event of the batch to the exchange with
  publisher confirms (all in flight at once, then waits for every confirm),
  and only then returns, so that the engine commits the batch's offsets
  after the broker confirmed it: what Debezium Server's RabbitMQ sink does.
  Routing key, body and properties follow the relay's message contract.
- null: returns at once: Debezium's own ceiling on this machine.

It prints protocol lines on stdout, each starting with "relay-bench:":
"started", "first" (the first batch arrived), "count N" and "done" (the
expected number of events was handled). relay-bench reads them, reads this
process's CPU and memory from /proc, and stops it.
"""

import argparse
import asyncio
import json
import sys
import threading


def emit(line):
    sys.stdout.write("relay-bench: " + line + "\n")
    sys.stdout.flush()


class RabbitSink:
    """Publishes batches with confirms from the engine's thread, through an
    asyncio loop (aiormq) running on a thread of its own."""

    def __init__(self, url, exchange):
        import aiormq  # noqa: F401  (fail early when missing)

        self.exchange = exchange
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.channel = self._run(self._connect(url))

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def _connect(self, url):
        import aiormq

        self.connection = await aiormq.connect(url)
        return await self.connection.channel(publisher_confirms=True)

    async def _publish(self, messages):
        import aiormq

        pending = [
            self.channel.basic_publish(
                body,
                exchange=self.exchange,
                routing_key=routing_key,
                mandatory=True,
                properties=aiormq.spec.Basic.Properties(
                    delivery_mode=2,
                    content_type="application/json",
                    message_id=message_id,
                    message_type=event_type,
                    app_id="debezium",
                    headers=headers,
                ),
            )
            for (routing_key, body, message_id, event_type, headers) in messages
        ]
        results = await asyncio.gather(*pending)
        for result in results:
            if not isinstance(result, aiormq.spec.Basic.Ack):
                raise RuntimeError("the broker did not ack an event: %r" % (result,))

    def publish(self, messages):
        self._run(self._publish(messages))


def header_map(record):
    headers = {}
    try:
        for h in record.headers():
            value = h.getValue()
            if value is None:
                continue
            text = str(value)
            try:
                decoded = json.loads(text)
            except ValueError:
                decoded = text
            headers[str(h.getKey())] = decoded if isinstance(decoded, str) else text
    except Exception:  # a record without headers
        pass
    return headers


def to_message(record):
    """The relay's message contract for one EventRouter record, or None."""
    value = record.value()
    if value is None:
        return None
    decoded = json.loads(str(value))
    # jsonb payloads come through as a JSON string holding the document.
    body = decoded.encode() if isinstance(decoded, str) else json.dumps(decoded).encode()
    headers = header_map(record)
    event_type = headers.get("type", "")
    aggregate_type = str(record.destination())
    key = record.key()
    aggregate_id = json.loads(str(key)) if key is not None else ""
    if not isinstance(aggregate_id, str):
        aggregate_id = str(aggregate_id)
    message_id = headers.get("id", "")
    amqp_headers = {
        "aggregate_type": aggregate_type,
        "aggregate_id": aggregate_id,
        "event_type": event_type,
    }
    return ("%s.%s" % (aggregate_type, event_type), body, message_id, event_type, amqp_headers)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sink", choices=["null", "rabbitmq"], required=True)
    ap.add_argument("--pg-port", type=int, required=True)
    ap.add_argument("--slot", required=True)
    ap.add_argument("--publication", required=True)
    ap.add_argument("--table", default="public.outbox")
    ap.add_argument("--amqp-url")
    ap.add_argument("--exchange")
    ap.add_argument("--expect", type=int, required=True)
    ap.add_argument("--offsets", required=True)
    args = ap.parse_args()

    from pydbzengine import BasePythonChangeHandler, DebeziumJsonEngine

    sink = RabbitSink(args.amqp_url, args.exchange) if args.sink == "rabbitmq" else None

    class Handler(BasePythonChangeHandler):
        def __init__(self):
            self.count = 0
            self.finished = False

        def handleJsonBatch(self, records):
            if self.count == 0:
                emit("first")
            if sink is not None:
                messages = [m for m in (to_message(r) for r in records) if m is not None]
                sink.publish(messages)
                self.count += len(messages)
            else:
                self.count += sum(1 for r in records if r.value() is not None)
            emit("count %d" % self.count)
            if self.count >= args.expect and not self.finished:
                self.finished = True
                emit("done")

    props = {
        "name": "relay-bench",
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "plugin.name": "pgoutput",
        "slot.name": args.slot,
        "publication.name": args.publication,
        "publication.autocreate.mode": "disabled",
        "snapshot.mode": "no_data",
        "database.hostname": "127.0.0.1",
        "database.port": str(args.pg_port),
        "database.user": "postgres",
        "database.password": "postgres",
        "database.dbname": "postgres",
        "topic.prefix": "bench",
        "table.include.list": args.table,
        "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
        "offset.storage.file.filename": args.offsets,
        "offset.flush.interval.ms": "1000",
        "converter.schemas.enable": "false",
        "key.converter.schemas.enable": "false",
        "value.converter.schemas.enable": "false",
        "transforms": "outbox",
        "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
        "transforms.outbox.table.field.event.id": "id",
        "transforms.outbox.table.field.event.key": "aggregate_id",
        "transforms.outbox.table.field.event.payload": "payload",
        "transforms.outbox.route.by.field": "aggregate_type",
        "transforms.outbox.route.topic.replacement": "${routedByValue}",
        "transforms.outbox.table.fields.additional.placement": "event_type:header:type",
    }
    engine = DebeziumJsonEngine(properties=props, handler=Handler())
    emit("started")
    engine.run()


if __name__ == "__main__":
    main()
