from tortoise import fields
from tortoise.models import Model


class Reward(Model):
    """An item of the points mall: points only, or points + cash (paid through WeChat Pay)."""

    id = fields.BigIntField(primary_key=True)
    name = fields.CharField(max_length=64)
    points = fields.BigIntField()
    cash_fen = fields.BigIntField(default=0)
    stock = fields.IntField(default=0)
    per_member_limit = fields.IntField(default=1)
    coupon_template = fields.ForeignKeyField("models.CouponTemplate", null=True, related_name="rewards")
    active = fields.BooleanField(default=True)
    valid_until = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "reward"


class Redemption(Model):
    """A member's redemption: status pending (awaiting cash payment), done, released; a payment
    that arrived after the release is refunded (refund_due until WeChat Pay accepts, then
    refunded). refunded_fen / points_returned: what refunds of its payment gave back."""

    id = fields.BigIntField(primary_key=True)
    reward = fields.ForeignKeyField("models.Reward", related_name="redemptions")
    member = fields.ForeignKeyField("models.Member", related_name="redemptions")
    points = fields.BigIntField()
    cash_fen = fields.BigIntField(default=0)
    status = fields.CharField(max_length=16, default="done")
    out_trade_no = fields.CharField(max_length=64, null=True, unique=True)
    prepay_id = fields.CharField(max_length=64, null=True)
    expires_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    transaction_id = fields.CharField(max_length=64, null=True)
    ledger_key = fields.CharField(max_length=128, null=True)  # its debit: points.restore gives into its lots
    refund_no = fields.CharField(max_length=64, null=True)  # our out_refund_no of a late payment
    refunded_fen = fields.BigIntField(default=0)
    points_returned = fields.BigIntField(default=0)

    class Meta:
        table = "redemption"


class MemberScore(Model):
    """RFM scores per member (quintiles 1..5) and the segment name, recomputed by a job."""

    id = fields.BigIntField(primary_key=True)
    member = fields.OneToOneField("models.Member", related_name="score")
    recency = fields.IntField()
    frequency = fields.IntField()
    monetary = fields.IntField()
    segment = fields.CharField(max_length=16, db_index=True)
    computed_at = fields.DatetimeField()

    class Meta:
        table = "member_score"
