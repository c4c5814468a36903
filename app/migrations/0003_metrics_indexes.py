from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0002_default_rules')]

    initial = False

    operations = [
        ops.AddIndex(
            model_name='Checkin',
            index=Index(fields=['day']),
        ),
        ops.AddIndex(
            model_name='Coupon',
            index=Index(fields=['created_at']),
        ),
        ops.AddIndex(
            model_name='Coupon',
            index=Index(fields=['used_at']),
        ),
        ops.AddIndex(
            model_name='LedgerEntry',
            index=Index(fields=['created_at']),
        ),
        ops.AddIndex(
            model_name='Member',
            index=Index(fields=['created_at']),
        ),
        ops.AddIndex(
            model_name='Payment',
            index=Index(fields=['paid_at']),
        ),
        ops.AddIndex(
            model_name='Referral',
            index=Index(fields=['created_at']),
        ),
        ops.AddIndex(
            model_name='Refund',
            index=Index(fields=['created_at']),
        ),
        ops.AddIndex(
            model_name='TierChange',
            index=Index(fields=['created_at']),
        ),
    ]
