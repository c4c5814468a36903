"""The growth toolkit (app/models/campaign.py): task completions, share campaigns, links, claims,
wake-ups; and Member.last_login_at, which the wake-up job reads."""
from tortoise import fields, migrations
from tortoise.fields.base import OnDelete
from tortoise.indexes import Index
from tortoise.migrations import operations as ops


def _fk(model: str, column: str, related: str, null: bool = False):
    return fields.ForeignKeyField(model, source_field=column, null=null, db_constraint=True, to_field='id',
                                  related_name=related, on_delete=OnDelete.CASCADE)


def _id():
    return fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)


async def mark_existing_logins(apps, schema_editor) -> None:
    # Logins before this column are unknown: count them as now, so that nobody active is taken
    # for dormant; the first wake-ups come 30 days after the deploy.
    await schema_editor.client.execute_script(
        "UPDATE member SET last_login_at = CURRENT_TIMESTAMP WHERE last_login_at IS NULL")


async def noop(apps, schema_editor) -> None:
    return None


class Migration(migrations.Migration):
    dependencies = [("models", "0011_metrics_day_stale")]

    initial = False

    operations = [
        ops.AddField(model_name="Member", name="last_login_at", field=fields.DatetimeField(null=True)),
        ops.RunPython(mark_existing_logins, noop),
        ops.CreateModel(
            name='TaskCompletion',
            fields=[
                ('id', _id()),
                ('key', fields.CharField(unique=True, max_length=128)),
                ('member', _fk('models.Member', 'member_id', 'task_completions')),
                ('kind', fields.CharField(max_length=32)),
                ('points', fields.IntField(default=0)),
                ('wanted', fields.IntField(default=0)),
                ('week', fields.DateField()),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'task_completion', 'app': 'models', 'pk_attr': 'id',
                     'indexes': [Index(fields=['member_id', 'week'])]},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Campaign',
            fields=[
                ('id', _id()),
                ('kind', fields.CharField(default='share', max_length=16)),
                ('key', fields.CharField(unique=True, max_length=32)),
                ('coupon_discount', fields.IntField(default=50)),
                ('points', fields.IntField(default=20)),
                ('daily_limit', fields.IntField(default=10)),
                ('stock', fields.IntField()),
                ('claimed', fields.IntField(default=0)),
                ('template', _fk('models.CouponTemplate', 'template_id', 'campaigns')),
                ('created_by', fields.CharField(max_length=64)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'campaign', 'app': 'models', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='ShareLink',
            fields=[
                ('id', _id()),
                ('token', fields.CharField(unique=True, max_length=32)),
                ('campaign', _fk('models.Campaign', 'campaign_id', 'links')),
                ('member', _fk('models.Member', 'member_id', 'share_links')),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'share_link', 'app': 'models', 'pk_attr': 'id',
                     'unique_together': (('campaign', 'member'),)},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='ShareClaim',
            fields=[
                ('id', _id()),
                ('campaign', _fk('models.Campaign', 'campaign_id', 'claims')),
                ('link', _fk('models.ShareLink', 'link_id', 'claims')),
                ('sharer', _fk('models.Member', 'sharer_id', 'share_claims_made')),
                ('friend', _fk('models.Member', 'friend_id', 'share_claims')),
                ('coupon', _fk('models.Coupon', 'coupon_id', 'share_claims', null=True)),
                ('day', fields.DateField()),
                ('rewarded', fields.BooleanField(default=False)),
                ('reward_skipped', fields.CharField(null=True, max_length=32)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'share_claim', 'app': 'models', 'pk_attr': 'id',
                     'unique_together': (('campaign', 'friend'),),
                     'indexes': [Index(fields=['sharer_id', 'day'])]},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='ShareClaimIdentity',
            fields=[
                ('id', _id()),
                ('campaign', _fk('models.Campaign', 'campaign_id', 'claim_identities')),
                ('identity', fields.CharField(max_length=80)),
                ('claim', _fk('models.ShareClaim', 'claim_id', 'identities')),
            ],
            options={'table': 'share_claim_identity', 'app': 'models', 'pk_attr': 'id',
                     'unique_together': (('campaign', 'identity'),)},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='ShareDay',
            fields=[
                ('id', _id()),
                ('campaign', _fk('models.Campaign', 'campaign_id', 'days')),
                ('sharer', _fk('models.Member', 'sharer_id', 'share_days')),
                ('day', fields.DateField()),
                ('rewarded', fields.IntField(default=0)),
            ],
            options={'table': 'share_day', 'app': 'models', 'pk_attr': 'id',
                     'unique_together': (('campaign', 'sharer', 'day'),)},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='WakeUp',
            fields=[
                ('id', _id()),
                ('key', fields.CharField(unique=True, max_length=80)),
                ('member', _fk('models.Member', 'member_id', 'wakeups')),
                ('spell_start', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('channel', fields.CharField(max_length=16)),
                ('sent_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('window_ends_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'wakeup', 'app': 'models', 'pk_attr': 'id',
                     'indexes': [Index(fields=['member_id', 'sent_at']), Index(fields=['sent_at'])]},
            bases=['Model'],
        ),
    ]
