"""Prints every order event outbox-relay publishes (the compose demo's consumer).

Declares a durable queue `demo.orders` bound to the relay's exchange with
`order.#`, then prints each message with its properties and acks it.
"""
import os
import time

import pika

url = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2f")
exchange = os.environ.get("EXCHANGE", "outbox")

while True:
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
        break
    except pika.exceptions.AMQPConnectionError:
        time.sleep(2)
channel = connection.channel()
channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
channel.queue_declare(queue="demo.orders", durable=True)
channel.queue_bind(queue="demo.orders", exchange=exchange, routing_key="order.#")


def show(ch, method, props, body):
    print(
        f"{method.routing_key} message_id={props.message_id} type={props.type} "
        f"headers={props.headers} body={body.decode()}"
    )
    ch.basic_ack(method.delivery_tag)


channel.basic_consume(queue="demo.orders", on_message_callback=show)
print(f"waiting for events on exchange {exchange!r} (queue demo.orders)")
channel.start_consuming()
