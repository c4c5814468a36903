from tortoise import fields
from tortoise.models import Model


class CouponTemplate(Model):
    """What a coupon gives: a no-threshold amount, a discount, or an amount over a minimum."""

    id = fields.BigIntField(primary_key=True)
    key = fields.CharField(max_length=64, unique=True)
    name = fields.CharField(max_length=64)
    kind = fields.CharField(max_length=16, default="amount")  # amount | discount
    amount_fen = fields.BigIntField(default=0)
    discount_percent = fields.IntField(default=100)
    min_spend_fen = fields.BigIntField(default=0)
    valid_days = fields.IntField(default=30)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "coupon_template"


class Coupon(Model):
    """An issued coupon: issue_key makes each issue happen once (birthday:{member}:{year})."""

    id = fields.BigIntField(primary_key=True)
    code = fields.CharField(max_length=32, unique=True)
    issue_key = fields.CharField(max_length=128, unique=True)
    template = fields.ForeignKeyField("models.CouponTemplate", related_name="coupons")
    member = fields.ForeignKeyField("models.Member", related_name="coupons")
    valid_from = fields.DatetimeField()
    expires_at = fields.DatetimeField()
    used_at = fields.DatetimeField(null=True)
    used_by = fields.CharField(max_length=64, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "coupon"
        indexes = (("created_at",), ("used_at",))  # issued / used in a range (metrics)
