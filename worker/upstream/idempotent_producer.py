"""An idempotent producer (and acks=all) outside exactly-once, when the broker takes one.

What breaks without it: Faust makes its producer idempotent only under exactly-once, so at
least once a send retried after a lost ack could write a result twice, even on a broker that
takes idempotent producers. The options are added through Faust's private
`Producer._settings_extra` hook, merged last into the aiokafka producer's options. Pinned by
tests/test_kafka_tuning.py (`test_the_idempotent_producer_adds_to_the_options_...`).

Upstream: drafted report: "faust-streaming: the aiokafka Producer sets
enable_idempotence=True only when processing_guarantee=exactly_once; there is no setting for
an idempotent producer under at_least_once (Kafka's default since 3.0). Proposal: a
`producer_enable_idempotence` setting passed through to AIOKafkaProducer."
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class IdempotentOptionsProducer:
    """Mixin for Faust's aiokafka `Producer`: idempotent (and acks=all) when the app's
    `idempotent_producer` says its broker takes it."""

    def _settings_extra(self) -> Mapping[str, Any]:
        extra = dict(super()._settings_extra())
        if getattr(self.app, "idempotent_producer", False):
            extra.update(acks="all", enable_idempotence=True)
        return extra
