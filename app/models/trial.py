from tortoise import fields
from tortoise.models import Model


class TierTrial(Model):
    """A new member's trial tier (0元升级): silver for 7 days, gold after a paid order in them."""

    id = fields.BigIntField(primary_key=True)
    member = fields.OneToOneField("models.Member", related_name="tier_trial")
    tier = fields.CharField(max_length=16)
    upgraded_tier = fields.CharField(max_length=16, null=True)
    upgraded_by = fields.CharField(max_length=64, null=True)  # the transaction_id of the order
    starts_at = fields.DatetimeField()
    ends_at = fields.DatetimeField()
    ended_at = fields.DatetimeField(null=True)

    class Meta:
        table = "tier_trial"
        indexes = (("ended_at", "ends_at"),)
