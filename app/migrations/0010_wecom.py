"""企业微信 customer contact (app/models/wecom.py): contacts, tier tags, stewards, broadcasts."""
import functools
from json import dumps, loads

from tortoise import fields, migrations
from tortoise.fields.base import OnDelete
from tortoise.indexes import Index
from tortoise.migrations import operations as ops

JSON = dict(encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)


class Migration(migrations.Migration):
    dependencies = [("models", "0009_referral_pair")]

    initial = False

    operations = [
        ops.CreateModel(
            name='WeComContact',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('corp_id', fields.CharField(max_length=64)),
                ('external_userid', fields.CharField(max_length=64)),
                ('staff_userid', fields.CharField(max_length=64)),
                ('unionid', fields.CharField(null=True, db_index=True, max_length=64)),
                ('member', fields.ForeignKeyField('models.Member', source_field='member_id', null=True, db_constraint=True, to_field='id', related_name='wecom_contacts', on_delete=OnDelete.CASCADE)),
                ('name', fields.CharField(null=True, max_length=64)),
                ('state', fields.CharField(default='active', max_length=16)),
                ('welcomed_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'wecom_contact', 'app': 'models', 'unique_together': (('corp_id', 'external_userid', 'staff_userid'),), 'indexes': [Index(fields=['member_id', 'state'])], 'pk_attr': 'id', 'table_description': 'A customer (external_userid) following one staff member (userid) of the corp.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='WeComTag',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('corp_id', fields.CharField(max_length=64)),
                ('tier', fields.CharField(max_length=16)),
                ('tag_id', fields.CharField(max_length=64)),
                ('group_id', fields.CharField(max_length=64)),
            ],
            options={'table': 'wecom_tag', 'app': 'models', 'unique_together': (('corp_id', 'tier'),), 'pk_attr': 'id', 'table_description': 'The corp tag of one tier in our tag group.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='WeComSteward',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('scope', fields.CharField(unique=True, max_length=40)),
                ('tier', fields.CharField(null=True, max_length=16)),
                ('member', fields.ForeignKeyField('models.Member', source_field='member_id', null=True, db_constraint=True, to_field='id', related_name='wecom_stewards', on_delete=OnDelete.CASCADE)),
                ('staff_userid', fields.CharField(max_length=64)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'wecom_steward', 'app': 'models', 'pk_attr': 'id', 'table_description': 'A steward for a tier or one member.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='WeComBroadcast',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('tier', fields.CharField(max_length=16)),
                ('text', fields.TextField()),
                ('actor', fields.CharField(max_length=64)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'wecom_broadcast', 'app': 'models', 'pk_attr': 'id', 'table_description': 'One tier broadcast an operator asked for.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='WeComBroadcastSend',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('broadcast', fields.ForeignKeyField('models.WeComBroadcast', source_field='broadcast_id', db_constraint=True, to_field='id', related_name='sends', on_delete=OnDelete.CASCADE)),
                ('sender', fields.CharField(max_length=64)),
                ('msgid', fields.CharField(null=True, max_length=128)),
                ('recipients', fields.IntField(default=0)),
                ('failed', fields.JSONField(default=list, **JSON)),
                ('error', fields.CharField(null=True, max_length=255)),
            ],
            options={'table': 'wecom_broadcast_send', 'app': 'models', 'pk_attr': 'id', 'table_description': "One add_msg_template call: a steward's mass message."},
            bases=['Model'],
        ),
    ]
