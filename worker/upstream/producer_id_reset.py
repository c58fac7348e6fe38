"""A new producer id after a batch the broker refused for good (a missing ACL).

What breaks without it: aiokafka 0.14.0 numbers a batch when it sends it and keeps the number
when the broker refuses the batch (TopicAuthorizationFailed), so every later batch to that
partition is OutOfOrderSequenceNumber, for good: an ACL granted back would not let the worker
publish again. `ProducerIdReset.reset_producer_id` clears the transaction manager's producer
id, its waiter and its sequences (aiokafka's private `_producer`, `_txn_manager`,
`_pid_and_epoch`, `_pid_waiter`, `_sequence_numbers`); the sender then asks for a new id
before its next send (`Sender._maybe_wait_for_pid`), as the Java client does for an
unresolved sequence. Pinned by tests/test_kafka_tuning.py
(`test_reset_producer_id_starts_the_idempotent_producers_sequences_again`).

Upstream: drafted report: "aiokafka: with enable_idempotence=True, a batch refused with a
non-retriable error (TopicAuthorizationFailedError) keeps the sequence number it was given,
so every later batch to that partition fails with OutOfOrderSequenceNumber until the producer
is recreated. The Java client resets the producer id for an unresolved sequence. Proposal:
TransactionManager.reset_producer_id(), called by the sender after such a failure."
"""

from __future__ import annotations

import asyncio

from aiokafka.producer import transaction_manager


class ProducerIdReset:
    """Mixin for Faust's aiokafka `Producer`: `reset_producer_id`."""

    def reset_producer_id(self) -> bool:
        """After a batch the broker refused for good: the idempotent producer gets a new
        producer id and starts its sequences again. Returns whether there was one to reset
        (not when transactional, or not idempotent)."""
        producer = self._producer
        txn = getattr(producer, "_txn_manager", None)
        if txn is None or txn.transactional_id is not None:
            return False
        txn._pid_and_epoch = _NO_PRODUCER_ID
        txn._pid_waiter = asyncio.get_running_loop().create_future()
        txn._sequence_numbers.clear()
        return True


_NO_PRODUCER_ID = transaction_manager.PidAndEpoch(transaction_manager.NO_PRODUCER_ID,
                                                  transaction_manager.NO_PRODUCER_EPOCH)
