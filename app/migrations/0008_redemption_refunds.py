"""Points + cash redemptions that are refunded (a late payment after release, or an operator's
refund of a paid one), and the lots a debit consumed, so it can be given back into them."""
from tortoise import fields, migrations
from tortoise.fields.base import OnDelete
from tortoise.indexes import Index
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0007_fillfactor")]

    initial = False

    operations = [
        ops.CreateModel(
            name="LotUse",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ("debit", fields.ForeignKeyField("models.LedgerEntry", source_field="debit_id", db_constraint=True,
                                                 to_field="id", related_name="lots_used",
                                                 on_delete=OnDelete.CASCADE)),
                ("lot", fields.ForeignKeyField("models.LedgerEntry", source_field="lot_id", db_constraint=True,
                                               to_field="id", related_name="uses", on_delete=OnDelete.CASCADE)),
                ("amount", fields.BigIntField()),
                ("restored", fields.BigIntField(default=0)),
            ],
            options={"table": "lot_use", "app": "models", "pk_attr": "id",
                     "indexes": [Index(fields=["debit_id"])],
                     "table_description": "What one debit took from one lot (points.restore gives it back)."},
            bases=["Model"],
        ),
        ops.AddField(model_name="Redemption", name="transaction_id",
                     field=fields.CharField(null=True, max_length=64)),
        ops.AddField(model_name="Redemption", name="ledger_key",
                     field=fields.CharField(null=True, max_length=128)),
        ops.AddField(model_name="Redemption", name="refund_no",
                     field=fields.CharField(null=True, max_length=64)),
        ops.AddField(model_name="Redemption", name="refunded_fen", field=fields.BigIntField(default=0)),
        ops.AddField(model_name="Redemption", name="points_returned", field=fields.BigIntField(default=0)),
    ]
