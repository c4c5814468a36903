from tortoise import fields
from tortoise.models import Model


class Member(Model):
    """A person in the programme: one per (appid, openid) of the mini-program."""

    id = fields.BigIntField(primary_key=True)
    appid = fields.CharField(max_length=32)
    openid = fields.CharField(max_length=64)
    unionid = fields.CharField(max_length=64, null=True, db_index=True)
    oa_openid = fields.CharField(max_length=64, null=True, unique=True)
    invite_code = fields.CharField(max_length=16, unique=True)
    inviter = fields.ForeignKeyField("models.Member", null=True, related_name="invitees",
                                     on_delete=fields.SET_NULL)
    device_id = fields.CharField(max_length=64, null=True, db_index=True)
    name = fields.CharField(max_length=64, null=True)
    phone = fields.CharField(max_length=20, null=True, db_index=True)
    birthday = fields.DateField(null=True)
    card_activated = fields.BooleanField(default=False)
    card_code = fields.CharField(max_length=64, null=True, unique=True)
    card_id = fields.CharField(max_length=64, null=True)
    tier = fields.CharField(max_length=16, default="regular")
    growth = fields.BigIntField(default=0)
    # The balance; negative only when a refund takes back points already spent.
    points = fields.BigIntField(default=0)
    streak = fields.IntField(default=0)
    last_checkin = fields.DateField(null=True)
    last_paid_at = fields.DatetimeField(null=True)
    last_login_at = fields.DatetimeField(null=True)  # to within LOGIN_MARK_EVERY (wake-ups)
    tier_since = fields.DatetimeField(null=True)
    followed = fields.BooleanField(default=False)
    blacklisted = fields.BooleanField(default=False)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "member"
        unique_together = (("appid", "openid"),)
        indexes = (("created_at",), ("tier",))  # new members per day, tier distribution (metrics)


class TierChange(Model):
    """Tier history: every move up or down, with its cause (payment, checkin, downgrade...)."""

    id = fields.BigIntField(primary_key=True)
    member = fields.ForeignKeyField("models.Member", related_name="tier_changes")
    from_tier = fields.CharField(max_length=16)
    to_tier = fields.CharField(max_length=16)
    cause = fields.CharField(max_length=64)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "tier_change"
        indexes = (("created_at",),)  # tier moves in a range (metrics)


class Blacklist(Model):
    """A member id or a device id refused earning, referral rewards and login."""

    id = fields.BigIntField(primary_key=True)
    kind = fields.CharField(max_length=16)  # "member" | "device"
    value = fields.CharField(max_length=64)
    reason = fields.CharField(max_length=255, default="")
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "blacklist"
        unique_together = (("kind", "value"),)
