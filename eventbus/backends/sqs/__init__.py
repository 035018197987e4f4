"""The SNS/SQS backend (``sqs://``): SNS topics fanning out to SQS queues, through boto3.

Works against AWS (credentials from boto3's usual chain) and against any
SNS/SQS-compatible server given as ``endpoint=``. See
``docs/backends/sqs.md`` for what is provisioned, the URL options and how
envelope headers map onto message attributes.
"""

from eventbus.backends.sqs.backend import BatchPublishError, FailedEntry, SqsBackend
from eventbus.backends.sqs.consumer import SqsConsumer, SqsDelivery
from eventbus.backends.sqs.provision import Change, Provisioned

__all__ = [
    "BatchPublishError",
    "Change",
    "FailedEntry",
    "Provisioned",
    "SqsBackend",
    "SqsConsumer",
    "SqsDelivery",
]
