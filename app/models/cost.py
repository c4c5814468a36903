from tortoise import fields
from tortoise.models import Model


class CostEntry(Model):
    """What one consumed benefit cost the programme, once per `key` (`coupon:{id}`, `points:{ledger key}`).

    Tagged with what granted it (campaign, experiment and arm) and the member's tier at the time.
    """

    id = fields.BigIntField(primary_key=True)
    key = fields.CharField(max_length=160, unique=True)
    kind = fields.CharField(max_length=16)  # coupon | points | bonus
    amount_fen = fields.BigIntField()
    member = fields.ForeignKeyField("models.Member", null=True, related_name="costs", on_delete=fields.SET_NULL)
    tier = fields.CharField(max_length=16, null=True)
    source = fields.CharField(max_length=64, default="")
    campaign = fields.CharField(max_length=64, null=True)
    experiment = fields.CharField(max_length=64, null=True)
    arm = fields.CharField(max_length=32, null=True)
    occurred_at = fields.DatetimeField()
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "cost_entry"
        # (experiment, arm, amount_fen): an experiment's cost per arm from the index alone
        indexes = (("occurred_at",), ("experiment", "arm", "amount_fen"))

