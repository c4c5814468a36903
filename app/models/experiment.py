from tortoise import fields
from tortoise.models import Model


class Experiment(Model):
    """An A/B test of rewards, fixed up front: arms with weights and rewards, population, metric, horizon."""

    id = fields.BigIntField(primary_key=True)
    key = fields.CharField(max_length=64, unique=True)
    name = fields.CharField(max_length=64)
    salt = fields.CharField(max_length=32)
    # [{"key", "weight", "holdout", "reward": {"amount_fen" | "discount_percent", "min_spend_fen", "valid_days"} | null}]
    arms = fields.JSONField()
    control = fields.CharField(max_length=32)
    population = fields.JSONField()  # {"segment": "silent"} or {"campaign": "spring"}
    metric = fields.CharField(max_length=16)  # repurchase | redemption
    metric_days = fields.IntField()
    starts_at = fields.DatetimeField()
    ends_at = fields.DatetimeField()  # the horizon: no assignment, and no conversion counted, after it
    actor = fields.CharField(max_length=64)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "experiment"


class ExperimentAssignment(Model):
    """A member's arm of one experiment: stored once (unique per experiment and member)."""

    id = fields.BigIntField(primary_key=True)
    experiment = fields.ForeignKeyField("models.Experiment", related_name="assignments")
    member = fields.ForeignKeyField("models.Member", related_name="experiment_assignments")
    arm = fields.CharField(max_length=32)
    assigned_at = fields.DatetimeField()
    coupon = fields.ForeignKeyField("models.Coupon", null=True, related_name="experiment_assignments",
                                    on_delete=fields.SET_NULL)
    # When the member converted (the first qualifying order, or the coupon's redemption), kept by
    # the payment, refund and redemption transactions, so results are one scan of this table.
    converted_at = fields.DatetimeField(null=True)

    class Meta:
        table = "experiment_assignment"
        unique_together = (("experiment", "member"),)
        indexes = (("experiment", "arm", "converted_at"), ("member",))
