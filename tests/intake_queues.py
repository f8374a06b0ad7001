"""The emulator's SQS queues as the event tests use them: an intake queue of a test's own,
events sent to it, its depth, and what is left in it (taken out)."""

from __future__ import annotations

import uuid

from emulator.lab import lab_sqs_client


def drain(url: str, queue_url: str) -> list[str]:
    """Every message body in the queue, taken out of it."""
    sqs = lab_sqs_client(url)
    bodies: list[str] = []
    while True:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = got.get("Messages", [])
        if not messages:
            return bodies
        bodies += [m["Body"] for m in messages]
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)
            ],
        )


def intake_queue(url: str, visibility_s: int = 5) -> str:
    queue: str = lab_sqs_client(url).create_queue(
        QueueName=f"intake-{uuid.uuid4().hex[:8]}",
        Attributes={"VisibilityTimeout": str(visibility_s)},
    )["QueueUrl"]
    return queue


def send(url: str, queue_url: str, bodies: list[str]) -> None:
    sqs = lab_sqs_client(url)
    for start in range(0, len(bodies), 10):
        sqs.send_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(n), "MessageBody": b} for n, b in enumerate(bodies[start : start + 10])
            ],
        )


def queue_depth(url: str, queue_url: str) -> int:
    attributes = lab_sqs_client(url).get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(v) for v in attributes.values())
