from tortoise import fields
from tortoise.models import Model


class MetricsDay(Model):
    """One business day's figures, pre-aggregated for GET /admin/metrics (app/domain/metrics_days.py).

    Member sets are roaring bitmaps of member ids (metrics_days.encode), so distinct counts
    over any range are unions and cardinalities. A row is current while built_version == version
    and no `metrics_day_stale` row names it: on PostgreSQL, triggers on ledger_entry, checkin,
    payment and member append one for the days a late write lands on (migrations 0006, 0011),
    taking no lock a build holds, so the day is rebuilt before it is read again.
    """

    id = fields.BigIntField(primary_key=True)
    tz = fields.CharField(max_length=64)
    day = fields.DateField()
    starts_at = fields.DatetimeField()
    ends_at = fields.DatetimeField()
    version = fields.IntField(default=1)
    built_version = fields.IntField(default=0)
    active = fields.BinaryField(null=True)  # ledger entry, check-in or payment that day
    checked_in = fields.BinaryField(null=True)
    payers = fields.BinaryField(null=True)  # one or more paid orders that day
    repeat_payers = fields.BinaryField(null=True)  # two or more that day
    new_members = fields.IntField(default=0)
    orders = fields.IntField(default=0)
    spend_fen = fields.BigIntField(default=0)
    issued = fields.BigIntField(default=0)
    spent = fields.BigIntField(default=0)
    expired = fields.BigIntField(default=0)
    taken_back = fields.BigIntField(default=0)
    built_at = fields.DatetimeField(null=True)

    class Meta:
        table = "metrics_day"
        unique_together = (("day", "tz"),)
        indexes = (("ends_at",),)  # the triggers' lookup: is there a built day after this instant?
