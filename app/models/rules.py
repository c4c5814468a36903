from tortoise import fields
from tortoise.models import Model


class Rule(Model):
    """One section of the programme's rules (check-in, tiers, caps...), JSON, seeded by a migration."""

    key = fields.CharField(max_length=32, primary_key=True)
    value = fields.JSONField()
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "rule"


class AuditLog(Model):
    """Every operator change: who, when, what, before and after."""

    id = fields.BigIntField(primary_key=True)
    actor = fields.CharField(max_length=64)
    action = fields.CharField(max_length=64)
    target = fields.CharField(max_length=128)
    before = fields.JSONField(null=True)
    after = fields.JSONField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "audit_log"
