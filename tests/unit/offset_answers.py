"""Stand-in answers to ``AdminClient.list_offsets``, for the admin clients unit tests make."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future

from confluent_kafka import KafkaError, KafkaException, TopicPartition

#: What a partition answers: an offset, an error, or ``None`` for no answer at all.
Reply = int | KafkaError | None


class Answer:
    """An answered partition, as ``list_offsets`` gives it (``ListOffsetsResultInfo``)."""

    def __init__(self, offset: int) -> None:
        self.offset = offset


def answers(
    wanted: Iterable[TopicPartition], reply: Callable[[TopicPartition], Reply]
) -> dict[TopicPartition, Future[Answer]]:
    """One future per partition of ``wanted``, settled as ``reply`` says."""
    futures: dict[TopicPartition, Future[Answer]] = {}
    for tp in wanted:
        future: Future[Answer] = Future()
        answer = reply(tp)
        if isinstance(answer, KafkaError):
            future.set_exception(KafkaException(answer))
        elif answer is not None:
            future.set_result(Answer(answer))
        futures[tp] = future
    return futures
