"""Stored value (app/models/wallet.py): wallets and their lots, recharge packages and orders, the
brand's own orders, refunds and events (/partner), and the daily reconciliation with WeChat Pay."""
from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from json import dumps, loads
from tortoise.fields.base import OnDelete
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0014_metrics_roaring')]

    initial = False

    operations = [
        ops.CreateModel(
            name='PartnerEvent',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('event_id', fields.CharField(unique=True, max_length=64)),
                ('member', fields.ForeignKeyField('models.Member', source_field='member_id', null=True, db_constraint=True, to_field='id', related_name='partner_events', on_delete=OnDelete.CASCADE)),
                ('openid', fields.CharField(null=True, max_length=64)),
                ('kind', fields.CharField(max_length=32)),
                ('answer', fields.JSONField(null=True, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'partner_event', 'app': 'models', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='PartnerOrder',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('order_no', fields.CharField(unique=True, max_length=64)),
                ('member', fields.ForeignKeyField('models.Member', source_field='member_id', null=True, db_constraint=True, to_field='id', related_name='partner_orders', on_delete=OnDelete.CASCADE)),
                ('openid', fields.CharField(max_length=64)),
                ('transaction_id', fields.CharField(max_length=64)),
                ('channel', fields.CharField(max_length=32)),
                ('paid_fen', fields.BigIntField()),
                ('wallet_fen', fields.BigIntField(default=0)),
                ('wallet_principal_fen', fields.BigIntField(default=0)),
                ('wallet_bonus_fen', fields.BigIntField(default=0)),
                ('refunded_fen', fields.BigIntField(default=0)),
                ('wallet_returned_fen', fields.BigIntField(default=0)),
                ('paid_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('answer', fields.JSONField(null=True, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'partner_order', 'app': 'models', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='PartnerRefund',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('refund_no', fields.CharField(unique=True, max_length=64)),
                ('order', fields.ForeignKeyField('models.PartnerOrder', source_field='order_id', db_constraint=True, to_field='id', related_name='refunds', on_delete=OnDelete.CASCADE)),
                ('refund_fen', fields.BigIntField()),
                ('wallet_principal_fen', fields.BigIntField(default=0)),
                ('wallet_bonus_fen', fields.BigIntField(default=0)),
                ('cash_fen', fields.BigIntField(default=0)),
                ('answer', fields.JSONField(null=True, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'partner_refund', 'app': 'models', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='RechargePackage',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('name', fields.CharField(max_length=64)),
                ('pay_fen', fields.BigIntField()),
                ('bonus_fen', fields.BigIntField(default=0)),
                ('bonus_valid_days', fields.IntField(null=True)),
                ('active', fields.BooleanField(default=True)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'recharge_package', 'app': 'models', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Recharge',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('out_trade_no', fields.CharField(unique=True, max_length=64)),
                ('member', fields.ForeignKeyField('models.Member', source_field='member_id', db_constraint=True, to_field='id', related_name='recharges', on_delete=OnDelete.CASCADE)),
                ('package', fields.ForeignKeyField('models.RechargePackage', source_field='package_id', null=True, db_constraint=True, to_field='id', related_name='recharges', on_delete=OnDelete.CASCADE)),
                ('principal_fen', fields.BigIntField()),
                ('bonus_fen', fields.BigIntField(default=0)),
                ('bonus_valid_days', fields.IntField(null=True)),
                ('status', fields.CharField(default='pending', max_length=16)),
                ('transaction_id', fields.CharField(null=True, unique=True, max_length=64)),
                ('prepay_id', fields.CharField(null=True, max_length=64)),
                ('paid_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('refunded_principal_fen', fields.BigIntField(default=0)),
                ('bonus_taken_back_fen', fields.BigIntField(default=0)),
                ('refund_no', fields.CharField(null=True, max_length=64)),
                ('shipping_queued', fields.BooleanField(default=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'recharge', 'app': 'models', 'indexes': [Index(fields=['member_id', 'status'])], 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='ReconciliationItem',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('bill_date', fields.DateField()),
                ('kind', fields.CharField(max_length=24)),
                ('trade', fields.CharField(max_length=16)),
                ('reference', fields.CharField(max_length=64)),
                ('ours_fen', fields.BigIntField(null=True)),
                ('theirs_fen', fields.BigIntField(null=True)),
                ('resolved', fields.BooleanField(default=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'reconciliation_item', 'app': 'models', 'unique_together': (('bill_date', 'trade', 'reference'),), 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='ReconciliationRun',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('bill_date', fields.DateField(unique=True)),
                ('lines', fields.BigIntField(default=0)),
                ('matched', fields.BigIntField(default=0)),
                ('mismatched', fields.BigIntField(default=0)),
                ('applied', fields.BigIntField(default=0)),
                ('finished_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'reconciliation_run', 'app': 'models', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Wallet',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('member', fields.OneToOneField('models.Member', source_field='member_id', db_constraint=True, to_field='id', related_name='wallet', on_delete=OnDelete.CASCADE)),
                ('principal_fen', fields.BigIntField(default=0)),
                ('bonus_fen', fields.BigIntField(default=0)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'wallet', 'app': 'models', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='WalletEntry',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('wallet', fields.ForeignKeyField('models.Wallet', source_field='wallet_id', db_constraint=True, to_field='id', related_name='entries', on_delete=OnDelete.CASCADE)),
                ('kind', fields.CharField(max_length=16)),
                ('delta', fields.BigIntField()),
                ('reason', fields.CharField(max_length=32)),
                ('idempotency_key', fields.CharField(unique=True, max_length=128)),
                ('remaining', fields.BigIntField(default=0)),
                ('expires_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('recharge', fields.ForeignKeyField('models.Recharge', source_field='recharge_id', null=True, db_constraint=True, to_field='id', related_name='entries', on_delete=OnDelete.CASCADE)),
                ('note', fields.CharField(default='', max_length=128)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'wallet_entry', 'app': 'models', 'indexes': [Index(fields=['wallet_id', 'kind', 'remaining']), Index(fields=['expires_at'])], 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='WalletLotUse',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('debit', fields.ForeignKeyField('models.WalletEntry', source_field='debit_id', db_constraint=True, to_field='id', related_name='lots_used', on_delete=OnDelete.CASCADE)),
                ('lot', fields.ForeignKeyField('models.WalletEntry', source_field='lot_id', db_constraint=True, to_field='id', related_name='uses', on_delete=OnDelete.CASCADE)),
                ('amount', fields.BigIntField()),
                ('restored', fields.BigIntField(default=0)),
            ],
            options={'table': 'wallet_lot_use', 'app': 'models', 'indexes': [Index(fields=['debit_id'])], 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='ReconciliationLine',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('bill_date', fields.DateField()),
                ('trade', fields.CharField(max_length=16)),
                ('reference', fields.CharField(max_length=64)),
                ('transaction_id', fields.CharField(max_length=64)),
                ('out_trade_no', fields.CharField(max_length=64)),
                ('openid', fields.CharField(max_length=64)),
                ('fen', fields.BigIntField()),
                ('traded_at', fields.CharField(max_length=32)),
            ],
            options={'table': 'reconciliation_line', 'app': 'models', 'indexes': [Index(fields=['bill_date', 'trade', 'reference'])], 'pk_attr': 'id'},
            bases=['Model'],
        ),
    ]
