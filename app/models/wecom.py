"""企业微信 customer contact: who follows which staff member, the tier tags, stewards, broadcasts."""
from tortoise import fields
from tortoise.models import Model


class WeComContact(Model):
    """A customer (external_userid) following one staff member (userid) of the corp.

    Kept whether or not it is one of our members: `member` is set once `externalcontact/get`
    gives a unionid that a member has. state: "active", "deleted" (either side removed the
    other) or "invalid" (WeCom answered 40096 for it)."""

    id = fields.BigIntField(primary_key=True)
    corp_id = fields.CharField(max_length=64)
    external_userid = fields.CharField(max_length=64)
    staff_userid = fields.CharField(max_length=64)
    unionid = fields.CharField(max_length=64, null=True, db_index=True)
    member = fields.ForeignKeyField("models.Member", null=True, related_name="wecom_contacts")
    name = fields.CharField(max_length=64, null=True)
    state = fields.CharField(max_length=16, default="active")
    welcomed_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "wecom_contact"
        unique_together = (("corp_id", "external_userid", "staff_userid"),)
        indexes = (("member_id", "state"),)


class WeComTag(Model):
    """The corp tag of one tier in our tag group "会员等级", as WeCom numbered it."""

    id = fields.BigIntField(primary_key=True)
    corp_id = fields.CharField(max_length=64)
    tier = fields.CharField(max_length=16)
    tag_id = fields.CharField(max_length=64)
    group_id = fields.CharField(max_length=64)

    class Meta:
        table = "wecom_tag"
        unique_together = (("corp_id", "tier"),)


class WeComSteward(Model):
    """A steward (staff userid) for a tier (`scope` "tier:gold") or one member ("member:42")."""

    id = fields.BigIntField(primary_key=True)
    scope = fields.CharField(max_length=40, unique=True)
    tier = fields.CharField(max_length=16, null=True)
    member = fields.ForeignKeyField("models.Member", null=True, related_name="wecom_stewards")
    staff_userid = fields.CharField(max_length=64)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "wecom_steward"


class WeComBroadcast(Model):
    """One tier broadcast an operator asked for; one WeComBroadcastSend per steward."""

    id = fields.BigIntField(primary_key=True)
    tier = fields.CharField(max_length=16)
    text = fields.TextField()
    actor = fields.CharField(max_length=64)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "wecom_broadcast"


class WeComBroadcastSend(Model):
    """One `add_msg_template` call: a steward's mass message, with WeCom's msgid."""

    id = fields.BigIntField(primary_key=True)
    broadcast = fields.ForeignKeyField("models.WeComBroadcast", related_name="sends")
    sender = fields.CharField(max_length=64)
    msgid = fields.CharField(max_length=128, null=True)
    recipients = fields.IntField(default=0)
    failed = fields.JSONField(default=list)
    error = fields.CharField(max_length=255, null=True)

    class Meta:
        table = "wecom_broadcast_send"
