from tortoise import fields
from tortoise.models import Model


class Checkin(Model):
    """One check-in per member per business day: the unique constraint is the rule."""

    id = fields.BigIntField(primary_key=True)
    member = fields.ForeignKeyField("models.Member", related_name="checkins")
    day = fields.DateField()
    makeup = fields.BooleanField(default=False)
    points = fields.IntField(default=0)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "checkin"
        unique_together = (("member", "day"),)
        indexes = (("day",),)  # check-ins of a range (metrics)
