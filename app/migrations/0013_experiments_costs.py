"""A/B tests of rewards (experiment, experiment_assignment), benefit costs (cost_entry) and
trial tiers (tier_trial)."""
import functools
from json import dumps, loads

from tortoise import fields, migrations
from tortoise.fields.base import OnDelete
from tortoise.indexes import Index
from tortoise.migrations import operations as ops

JSON = dict(encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)


class Migration(migrations.Migration):
    dependencies = [("models", "0012_campaigns")]

    initial = False

    operations = [
        ops.CreateModel(
            name="Experiment",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ("key", fields.CharField(unique=True, max_length=64)),
                ("name", fields.CharField(max_length=64)),
                ("salt", fields.CharField(max_length=32)),
                ("arms", fields.JSONField(**JSON)),
                ("control", fields.CharField(max_length=32)),
                ("population", fields.JSONField(**JSON)),
                ("metric", fields.CharField(max_length=16)),
                ("metric_days", fields.IntField()),
                ("starts_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("ends_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("actor", fields.CharField(max_length=64)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={"table": "experiment", "app": "models", "pk_attr": "id",
                     "table_description": "An A/B test of rewards, fixed up front."},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="ExperimentAssignment",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ("experiment", fields.ForeignKeyField("models.Experiment", source_field="experiment_id",
                                                      db_constraint=True, to_field="id", related_name="assignments",
                                                      on_delete=OnDelete.CASCADE)),
                ("member", fields.ForeignKeyField("models.Member", source_field="member_id", db_constraint=True,
                                                  to_field="id", related_name="experiment_assignments",
                                                  on_delete=OnDelete.CASCADE)),
                ("arm", fields.CharField(max_length=32)),
                ("assigned_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("coupon", fields.ForeignKeyField("models.Coupon", source_field="coupon_id", null=True,
                                                  db_constraint=True, to_field="id",
                                                  related_name="experiment_assignments",
                                                  on_delete=OnDelete.SET_NULL)),
                ("converted_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={"table": "experiment_assignment", "app": "models", "pk_attr": "id",
                     "unique_together": (("experiment", "member"),),
                     "indexes": [Index(fields=["experiment_id", "arm", "converted_at"]),
                                 Index(fields=["member_id"])],
                     "table_description": "A member's arm of one experiment, stored once."},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="CostEntry",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ("key", fields.CharField(unique=True, max_length=160)),
                ("kind", fields.CharField(max_length=16)),
                ("amount_fen", fields.BigIntField()),
                ("member", fields.ForeignKeyField("models.Member", source_field="member_id", null=True,
                                                  db_constraint=True, to_field="id", related_name="costs",
                                                  on_delete=OnDelete.SET_NULL)),
                ("tier", fields.CharField(null=True, max_length=16)),
                ("source", fields.CharField(default="", max_length=64)),
                ("campaign", fields.CharField(null=True, max_length=64)),
                ("experiment", fields.CharField(null=True, max_length=64)),
                ("arm", fields.CharField(null=True, max_length=32)),
                ("occurred_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={"table": "cost_entry", "app": "models", "pk_attr": "id",
                     "indexes": [Index(fields=["occurred_at"]), Index(fields=["experiment", "arm", "amount_fen"])],
                     "table_description": "What one consumed benefit cost, once per key."},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="TierTrial",
            fields=[
                ("id", fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ("member", fields.OneToOneField("models.Member", source_field="member_id", db_constraint=True,
                                                to_field="id", related_name="tier_trial",
                                                on_delete=OnDelete.CASCADE)),
                ("tier", fields.CharField(max_length=16)),
                ("upgraded_tier", fields.CharField(null=True, max_length=16)),
                ("upgraded_by", fields.CharField(null=True, max_length=64)),
                ("starts_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("ends_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("ended_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={"table": "tier_trial", "app": "models", "pk_attr": "id",
                     "indexes": [Index(fields=["ended_at", "ends_at"])],
                     "table_description": "A new member's trial tier (0元升级)."},
            bases=["Model"],
        ),
    ]
