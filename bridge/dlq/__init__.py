"""Dead-letter topics: what a dead letter carries, publishing it so it always fits, and the tools
to list, show and replay them."""

from bridge.dlq.letters import DLQ_HEADERS, REASONS, DeadLetterRecord, fitted, reason_of
from bridge.dlq.publisher import DlqPublisher
from bridge.dlq.tools import REPLAY_OF_HEADER, DlqRecord, ReplayReport, dlq_depths, read_dlq, replay

__all__ = [
    "DLQ_HEADERS",
    "REASONS",
    "REPLAY_OF_HEADER",
    "DeadLetterRecord",
    "DlqPublisher",
    "DlqRecord",
    "ReplayReport",
    "dlq_depths",
    "fitted",
    "read_dlq",
    "reason_of",
    "replay",
]
