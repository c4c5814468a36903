from tortoise import fields
from tortoise.models import Model


class LedgerEntry(Model):
    """One change of a member's points: append-only, unique idempotency key naming its cause.

    An earning (delta > 0) is also a lot: remaining is what is left of it to spend or
    expire, expires_at when it lapses. capped_on is the business day whose daily cap it
    counted against, so the cap can be rebuilt from the ledger after a Redis restart.
    """

    id = fields.BigIntField(primary_key=True)
    member = fields.ForeignKeyField("models.Member", related_name="ledger")
    delta = fields.BigIntField()
    growth_delta = fields.BigIntField(default=0)
    reason = fields.CharField(max_length=32)
    idempotency_key = fields.CharField(max_length=128, unique=True)
    remaining = fields.BigIntField(default=0)
    expires_at = fields.DatetimeField(null=True)
    capped_on = fields.DateField(null=True)
    note = fields.CharField(max_length=255, default="")
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "ledger_entry"
        indexes = (("member_id", "id"), ("member_id", "capped_on"), ("expires_at",),
                   ("created_at",))  # sums over a range (metrics)


class LotUse(Model):
    """What one debit took from one lot, written for debits that may be given back (a points +
    cash redemption): `points.restore` returns the points into the same lots, with their expiry."""

    id = fields.BigIntField(primary_key=True)
    debit = fields.ForeignKeyField("models.LedgerEntry", related_name="lots_used")
    lot = fields.ForeignKeyField("models.LedgerEntry", related_name="uses")
    amount = fields.BigIntField()
    restored = fields.BigIntField(default=0)

    class Meta:
        table = "lot_use"
        indexes = (("debit_id",),)
