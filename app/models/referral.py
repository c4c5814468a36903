from tortoise import fields
from tortoise.models import Model


class Referral(Model):
    """Invitee bound to inviter, once (unique invitee): rewarded_at set once, forever.

    pair_key is "{lower id}:{higher id}" of the two, unique: A invites B and B invites A
    cannot both stand, however they race (null only on rows older than the column)."""

    id = fields.BigIntField(primary_key=True)
    inviter = fields.ForeignKeyField("models.Member", related_name="referrals_made")
    invitee = fields.OneToOneField("models.Member", related_name="referral")
    source = fields.CharField(max_length=16, default="login")  # login | oa_scene
    pair_key = fields.CharField(max_length=41, null=True, unique=True)
    paid_at = fields.DatetimeField(null=True)
    rewarded_at = fields.DatetimeField(null=True)
    reward_skipped = fields.CharField(max_length=64, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "referral"
        indexes = (("created_at",),)  # the referral funnel of a range (metrics)
