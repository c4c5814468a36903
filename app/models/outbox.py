from tortoise import fields
from tortoise.models import Model


class OutboxMessage(Model):
    """Something to tell WeChat, written in the transaction that caused it, sent by a worker.

    key is unique per (member, kind, period) so a re-run never queues twice. Kinds:
    subscribe messages (channel="subscribe") and member-card bonus pushes (channel="card",
    ordered per member by id).
    """

    id = fields.BigIntField(primary_key=True)
    key = fields.CharField(max_length=160, unique=True)
    channel = fields.CharField(max_length=16)
    kind = fields.CharField(max_length=32)
    member = fields.ForeignKeyField("models.Member", related_name="outbox")
    payload = fields.JSONField(default=dict)
    status = fields.CharField(max_length=16, default="pending")  # pending|sent|skipped|dead
    attempts = fields.IntField(default=0)
    next_attempt_at = fields.DatetimeField(null=True)
    last_error = fields.CharField(max_length=255, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    sent_at = fields.DatetimeField(null=True)

    class Meta:
        table = "outbox_message"
        indexes = (("status", "next_attempt_at"),)


class SubscriptionQuota(Model):
    """How many subscription messages a member accepted per template and we have not spent."""

    id = fields.BigIntField(primary_key=True)
    member = fields.ForeignKeyField("models.Member", related_name="quotas")
    template_id = fields.CharField(max_length=64)
    remaining = fields.IntField(default=0)

    class Meta:
        table = "subscription_quota"
        unique_together = (("member", "template_id"),)
