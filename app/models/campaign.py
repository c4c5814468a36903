"""The growth toolkit: task completions, share campaigns with their links and claims, wake-ups."""
from tortoise import fields
from tortoise.models import Model


class TaskCompletion(Model):
    """A task done once: key is unique (`task:profile:{member}`, `task:event:{event_id}`, `share:{claim}:{role}`).

    Written first in the award's transaction, so a concurrent duplicate waits on the unique index
    and then fails before it touches the caps; points is what the caps let through."""

    id = fields.BigIntField(primary_key=True)
    key = fields.CharField(max_length=128, unique=True)
    member = fields.ForeignKeyField("models.Member", related_name="task_completions")
    kind = fields.CharField(max_length=32)
    points = fields.IntField(default=0)
    wanted = fields.IntField(default=0)
    week = fields.DateField()  # the Monday of the business week it counts in
    created_at = fields.DatetimeField()

    class Meta:
        table = "task_completion"
        indexes = (("member_id", "week"),)


class Campaign(Model):
    """A share campaign (社交裂变券): the friend's coupon (a discount), both sides' points, the
    sharer's rewarded claims a day, and the coupons left (claimed counts up to stock)."""

    id = fields.BigIntField(primary_key=True)
    kind = fields.CharField(max_length=16, default="share")
    key = fields.CharField(max_length=32, unique=True)
    coupon_discount = fields.IntField(default=50)  # percent paid: 50 is 5折
    points = fields.IntField(default=20)
    daily_limit = fields.IntField(default=10)
    stock = fields.IntField()
    claimed = fields.IntField(default=0)
    template = fields.ForeignKeyField("models.CouponTemplate", related_name="campaigns")
    created_by = fields.CharField(max_length=64)
    created_at = fields.DatetimeField()

    class Meta:
        table = "campaign"


class ShareLink(Model):
    """One member's link of one campaign (unique): making it again returns the same token."""

    id = fields.BigIntField(primary_key=True)
    token = fields.CharField(max_length=32, unique=True)
    campaign = fields.ForeignKeyField("models.Campaign", related_name="links")
    member = fields.ForeignKeyField("models.Member", related_name="share_links")
    created_at = fields.DatetimeField()

    class Meta:
        table = "share_link"
        unique_together = (("campaign", "member"),)


class ShareClaim(Model):
    """A friend's claim through a link: once per campaign and friend; rewarded when the sharer's
    daily slot was free (else reward_skipped says why)."""

    id = fields.BigIntField(primary_key=True)
    campaign = fields.ForeignKeyField("models.Campaign", related_name="claims")
    link = fields.ForeignKeyField("models.ShareLink", related_name="claims")
    sharer = fields.ForeignKeyField("models.Member", related_name="share_claims_made")
    friend = fields.ForeignKeyField("models.Member", related_name="share_claims")
    coupon = fields.ForeignKeyField("models.Coupon", related_name="share_claims", null=True)
    day = fields.DateField()
    rewarded = fields.BooleanField(default=False)
    reward_skipped = fields.CharField(max_length=32, null=True)
    created_at = fields.DatetimeField()

    class Meta:
        table = "share_claim"
        unique_together = (("campaign", "friend"),)
        indexes = (("sharer_id", "day"),)


class ShareClaimIdentity(Model):
    """Who claimed, as each of member, unionid and device (`m:1`, `u:…`, `d:…`): unique per
    campaign, so one person claims a campaign once whichever account or phone they use."""

    id = fields.BigIntField(primary_key=True)
    campaign = fields.ForeignKeyField("models.Campaign", related_name="claim_identities")
    identity = fields.CharField(max_length=80)
    claim = fields.ForeignKeyField("models.ShareClaim", related_name="identities")

    class Meta:
        table = "share_claim_identity"
        unique_together = (("campaign", "identity"),)


class ShareDay(Model):
    """A sharer's rewarded claims of one campaign on one business day, raised by a conditional
    UPDATE (rewarded < daily_limit) checked by its row count."""

    id = fields.BigIntField(primary_key=True)
    campaign = fields.ForeignKeyField("models.Campaign", related_name="days")
    sharer = fields.ForeignKeyField("models.Member", related_name="share_days")
    day = fields.DateField()
    rewarded = fields.IntField(default=0)

    class Meta:
        table = "share_day"
        unique_together = (("campaign", "sharer", "day"),)


class WakeUp(Model):
    """A return coupon to a dormant member: once per dormant spell (key `wakeup:{member}:{spell}`,
    the spell starting at the member's last login, payment or registration)."""

    id = fields.BigIntField(primary_key=True)
    key = fields.CharField(max_length=80, unique=True)
    member = fields.ForeignKeyField("models.Member", related_name="wakeups")
    spell_start = fields.DatetimeField()
    channel = fields.CharField(max_length=16)  # subscribe | oa | unreachable
    sent_at = fields.DatetimeField()
    window_ends_at = fields.DatetimeField()  # a paid order until then, not refunded in full: a success

    class Meta:
        table = "wakeup"
        indexes = (("member_id", "sent_at"), ("sent_at",))
