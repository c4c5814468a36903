from tortoise import fields
from tortoise.models import Model


class Payment(Model):
    """A paid order from WeChat Pay, recorded once by transaction_id.

    member is null while the payer's openid is not a member yet, and it is credited when the
    member appears (credited flips in the same transaction as the ledger entry).
    """

    id = fields.BigIntField(primary_key=True)
    transaction_id = fields.CharField(max_length=64, unique=True)
    out_trade_no = fields.CharField(max_length=64, db_index=True)
    openid = fields.CharField(max_length=64, db_index=True)
    member = fields.ForeignKeyField("models.Member", null=True, related_name="payments")
    total_fen = fields.BigIntField()
    payer_total_fen = fields.BigIntField()
    refunded_fen = fields.BigIntField(default=0)
    points_awarded = fields.BigIntField(default=0)
    growth_awarded = fields.BigIntField(default=0)
    credited = fields.BooleanField(default=False)
    paid_at = fields.DatetimeField()
    source = fields.CharField(max_length=8, default="v3")
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "payment"
        indexes = (("paid_at",),)  # payments of a range (metrics)


class Refund(Model):
    """A refund, recorded once by refund_id: takes back the refunded share."""

    id = fields.BigIntField(primary_key=True)
    refund_id = fields.CharField(max_length=64, unique=True)
    payment = fields.ForeignKeyField("models.Payment", related_name="refunds")
    refund_fen = fields.BigIntField()
    points_taken = fields.BigIntField(default=0)
    growth_taken = fields.BigIntField(default=0)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "refund"
        indexes = (("created_at",),)  # refunds of a range (metrics)
