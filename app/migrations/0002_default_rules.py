"""Seeds the default rules of CONTRACT.md, so operators can change them without a deploy."""
from tortoise import migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0001_initial")]

    operations = [
        ops.RunSQL(
            [
                'INSERT INTO rule ("key", value, updated_at) VALUES (\'checkin\', \'{"daily_points":5,"streak_days":7,"streak_bonus":20}\', CURRENT_TIMESTAMP)',
                'INSERT INTO rule ("key", value, updated_at) VALUES (\'makeup\', \'{"per_month":2,"window_days":7,"cost":10}\', CURRENT_TIMESTAMP)',
                'INSERT INTO rule ("key", value, updated_at) VALUES (\'growth\', \'{"per_yuan":1,"per_checkin":5}\', CURRENT_TIMESTAMP)',
                'INSERT INTO rule ("key", value, updated_at) VALUES (\'tiers\', \'{"levels":[{"key":"regular","name":"普通","floor":0,"multiplier":1.0},{"key":"silver","name":"银卡","floor":500,"multiplier":1.2},{"key":"gold","name":"金卡","floor":5000,"multiplier":1.5},{"key":"diamond","name":"钻石","floor":20000,"multiplier":2.0}],"downgrade_after_months":3}\', CURRENT_TIMESTAMP)',
                'INSERT INTO rule ("key", value, updated_at) VALUES (\'points\', \'{"per_yuan":1,"expiry_months":12,"remind_days":[30,7],"daily_cap":200}\', CURRENT_TIMESTAMP)',
                'INSERT INTO rule ("key", value, updated_at) VALUES (\'referral\', \'{"inviter_points":50,"invitee_points":50,"per_inviter_daily":20}\', CURRENT_TIMESTAMP)',
                'INSERT INTO rule ("key", value, updated_at) VALUES (\'birthday\', \'{"days_ahead":3,"coupon_fen":{"regular":2000,"silver":5000,"gold":10000,"diamond":20000},"valid_days":30}\', CURRENT_TIMESTAMP)',
                'INSERT INTO rule ("key", value, updated_at) VALUES (\'member_day\', \'{"weekday":3,"multiplier":2.0}\', CURRENT_TIMESTAMP)',
                'INSERT INTO rule ("key", value, updated_at) VALUES (\'limits\', \'{"login_per_openid_per_minute":10,"login_per_device_per_minute":10,"login_per_ip_per_minute":300,"registrations_per_device_per_day":3}\', CURRENT_TIMESTAMP)',
            ],
            reverse_sql=["DELETE FROM rule"],
        ),
    ]
