from tortoise import fields
from tortoise.models import Model


class Wallet(Model):
    """A member's stored value (储值), in integer fen: principal (money paid in) and bonus (given
    by a recharge package) kept apart. Moved only by app/domain/wallet.py, by conditional
    UPDATEs in the transaction that writes the matching WalletEntry rows."""

    id = fields.BigIntField(primary_key=True)
    member = fields.OneToOneField("models.Member", related_name="wallet")
    principal_fen = fields.BigIntField(default=0)
    bonus_fen = fields.BigIntField(default=0)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "wallet"


class WalletEntry(Model):
    """One change of one side (principal or bonus) of a wallet: append-only, with a unique
    idempotency key naming its cause. A credit is a lot: remaining is what is left of it to
    spend, refund or expire; a bonus lot may lapse at expires_at, principal never does."""

    id = fields.BigIntField(primary_key=True)
    wallet = fields.ForeignKeyField("models.Wallet", related_name="entries")
    kind = fields.CharField(max_length=16)  # principal | bonus
    delta = fields.BigIntField()
    reason = fields.CharField(max_length=32)
    idempotency_key = fields.CharField(max_length=128, unique=True)
    remaining = fields.BigIntField(default=0)
    expires_at = fields.DatetimeField(null=True)
    recharge = fields.ForeignKeyField("models.Recharge", null=True, related_name="entries")
    note = fields.CharField(max_length=128, default="")
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "wallet_entry"
        indexes = (("wallet_id", "kind", "remaining"), ("expires_at",))


class WalletLotUse(Model):
    """What one debit took from one lot, so a refund returns it there, in the proportions taken."""

    id = fields.BigIntField(primary_key=True)
    debit = fields.ForeignKeyField("models.WalletEntry", related_name="lots_used")
    lot = fields.ForeignKeyField("models.WalletEntry", related_name="uses")
    amount = fields.BigIntField()
    restored = fields.BigIntField(default=0)

    class Meta:
        table = "wallet_lot_use"
        indexes = (("debit_id",),)


class RechargePackage(Model):
    """An operator's offer: pay `pay_fen`, get bonus_fen more; the bonus lapses after
    bonus_valid_days when set."""

    id = fields.BigIntField(primary_key=True)
    name = fields.CharField(max_length=64)
    pay_fen = fields.BigIntField()
    bonus_fen = fields.BigIntField(default=0)
    bonus_valid_days = fields.IntField(null=True)
    active = fields.BooleanField(default=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "recharge_package"


class Recharge(Model):
    """A recharge order (out_trade_no rc…): pending until its payment notification credits it
    once (paid), refunded by an operator or a Pay refund of its transaction."""

    id = fields.BigIntField(primary_key=True)
    out_trade_no = fields.CharField(max_length=64, unique=True)
    member = fields.ForeignKeyField("models.Member", related_name="recharges")
    package = fields.ForeignKeyField("models.RechargePackage", null=True, related_name="recharges")
    principal_fen = fields.BigIntField()
    bonus_fen = fields.BigIntField(default=0)
    bonus_valid_days = fields.IntField(null=True)
    status = fields.CharField(max_length=16, default="pending")  # pending|paid|refunded
    transaction_id = fields.CharField(max_length=64, null=True, unique=True)
    prepay_id = fields.CharField(max_length=64, null=True)
    paid_at = fields.DatetimeField(null=True)
    refunded_principal_fen = fields.BigIntField(default=0)
    bonus_taken_back_fen = fields.BigIntField(default=0)
    refund_no = fields.CharField(max_length=64, null=True)
    shipping_queued = fields.BooleanField(default=False)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "recharge"
        indexes = (("member_id", "status"),)


class PartnerOrder(Model):
    """A paid order reported by the brand's mall or till, once per order_no; answer is what the
    first request was told (a repeat gets it again)."""

    id = fields.BigIntField(primary_key=True)
    order_no = fields.CharField(max_length=64, unique=True)
    member = fields.ForeignKeyField("models.Member", null=True, related_name="partner_orders")
    openid = fields.CharField(max_length=64)
    transaction_id = fields.CharField(max_length=64)
    channel = fields.CharField(max_length=32)
    paid_fen = fields.BigIntField()
    wallet_fen = fields.BigIntField(default=0)
    wallet_principal_fen = fields.BigIntField(default=0)
    wallet_bonus_fen = fields.BigIntField(default=0)
    refunded_fen = fields.BigIntField(default=0)
    wallet_returned_fen = fields.BigIntField(default=0)
    paid_at = fields.DatetimeField()
    answer = fields.JSONField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "partner_order"


class PartnerRefund(Model):
    """A refund of a partner order, once per refund_no."""

    id = fields.BigIntField(primary_key=True)
    refund_no = fields.CharField(max_length=64, unique=True)
    order = fields.ForeignKeyField("models.PartnerOrder", related_name="refunds")
    refund_fen = fields.BigIntField()
    wallet_principal_fen = fields.BigIntField(default=0)  # stored value given back, per side
    wallet_bonus_fen = fields.BigIntField(default=0)
    cash_fen = fields.BigIntField(default=0)  # the rest: its points and growth are taken back
    answer = fields.JSONField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "partner_refund"


class PartnerEvent(Model):
    """A behaviour event from the brand's systems (task points), once per event_id."""

    id = fields.BigIntField(primary_key=True)
    event_id = fields.CharField(max_length=64, unique=True)
    member = fields.ForeignKeyField("models.Member", null=True, related_name="partner_events")
    openid = fields.CharField(max_length=64, null=True)
    kind = fields.CharField(max_length=32)
    answer = fields.JSONField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "partner_event"


class ReconciliationItem(Model):
    """One difference between WeChat Pay's trade bill of a day and our records, for operators."""

    id = fields.BigIntField(primary_key=True)
    bill_date = fields.DateField()
    kind = fields.CharField(max_length=24)  # missing_ours | missing_theirs | amount_differs | applied
    trade = fields.CharField(max_length=16)  # payment | refund
    reference = fields.CharField(max_length=64)  # transaction_id or refund_id
    ours_fen = fields.BigIntField(null=True)
    theirs_fen = fields.BigIntField(null=True)
    resolved = fields.BooleanField(default=False)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "reconciliation_item"
        unique_together = (("bill_date", "trade", "reference"),)


class ReconciliationRun(Model):
    """The summary of one day's reconciliation."""

    id = fields.BigIntField(primary_key=True)
    bill_date = fields.DateField(unique=True)
    lines = fields.BigIntField(default=0)
    matched = fields.BigIntField(default=0)
    mismatched = fields.BigIntField(default=0)
    applied = fields.BigIntField(default=0)
    finished_at = fields.DatetimeField(null=True)

    class Meta:
        table = "reconciliation_run"


class ReconciliationLine(Model):
    """One line of a downloaded trade bill, staged for the comparison in SQL (replaced per day)."""

    id = fields.BigIntField(primary_key=True)
    bill_date = fields.DateField()
    trade = fields.CharField(max_length=16)  # payment | refund
    reference = fields.CharField(max_length=64)  # transaction_id, or refund_id for a refund
    transaction_id = fields.CharField(max_length=64)
    out_trade_no = fields.CharField(max_length=64)
    openid = fields.CharField(max_length=64)
    fen = fields.BigIntField()
    traded_at = fields.CharField(max_length=32)

    class Meta:
        table = "reconciliation_line"
        indexes = (("bill_date", "trade", "reference"),)
