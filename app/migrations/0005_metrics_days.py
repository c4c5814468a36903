from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0004_metrics_covering_indexes')]

    initial = False

    operations = [
        ops.CreateModel(
            name='MetricsDay',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('tz', fields.CharField(max_length=64)),
                ('day', fields.DateField()),
                ('starts_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('ends_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('version', fields.IntField(default=1)),
                ('built_version', fields.IntField(default=0)),
                ('active', fields.BinaryField(null=True)),
                ('checked_in', fields.BinaryField(null=True)),
                ('payers', fields.BinaryField(null=True)),
                ('repeat_payers', fields.BinaryField(null=True)),
                ('new_members', fields.IntField(default=0)),
                ('orders', fields.IntField(default=0)),
                ('spend_fen', fields.BigIntField(default=0)),
                ('issued', fields.BigIntField(default=0)),
                ('spent', fields.BigIntField(default=0)),
                ('expired', fields.BigIntField(default=0)),
                ('taken_back', fields.BigIntField(default=0)),
                ('built_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'metrics_day', 'app': 'models', 'unique_together': (('day', 'tz'),), 'indexes': [Index(fields=['ends_at'])], 'pk_attr': 'id', 'table_description': "One business day's figures, pre-aggregated for GET /admin/metrics (app/domain/metrics_days.py)."},
            bases=['Model'],
        ),
        ops.AddIndex(
            model_name='Member',
            index=Index(fields=['tier']),
        ),
    ]
