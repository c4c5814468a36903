"""All models, one module per domain noun: Tortoise loads them from here."""
from app.models.campaign import (Campaign, ShareClaim, ShareClaimIdentity, ShareDay, ShareLink,
                                 TaskCompletion, WakeUp)
from app.models.checkin import Checkin
from app.models.cost import CostEntry
from app.models.coupon import Coupon, CouponTemplate
from app.models.experiment import Experiment, ExperimentAssignment
from app.models.ledger import LedgerEntry, LotUse
from app.models.member import Blacklist, Member, TierChange
from app.models.metrics import MetricsDay
from app.models.outbox import OutboxMessage, SubscriptionQuota
from app.models.payment import Payment, Refund
from app.models.referral import Referral
from app.models.reward import MemberScore, Redemption, Reward
from app.models.rules import AuditLog, Rule
from app.models.trial import TierTrial
from app.models.wallet import (PartnerEvent, PartnerOrder, PartnerRefund, ReconciliationItem,
                               ReconciliationLine, ReconciliationRun, Recharge, RechargePackage, Wallet,
                               WalletEntry, WalletLotUse)
from app.models.wecom import WeComBroadcast, WeComBroadcastSend, WeComContact, WeComSteward, WeComTag

__all__ = [
    "AuditLog", "Blacklist", "Campaign", "Checkin", "CostEntry", "Coupon", "CouponTemplate", "Experiment",
    "ExperimentAssignment", "LedgerEntry", "LotUse", "Member",
    "MemberScore", "MetricsDay", "OutboxMessage", "Payment", "Redemption", "Refund", "Referral", "Reward",
    "Rule", "ShareClaim", "ShareClaimIdentity", "ShareDay", "ShareLink", "SubscriptionQuota",
    "TaskCompletion", "TierChange", "TierTrial", "WakeUp",
    "PartnerEvent", "PartnerOrder", "PartnerRefund", "ReconciliationItem", "ReconciliationLine",
    "ReconciliationRun", "Recharge", "RechargePackage", "Wallet", "WalletEntry", "WalletLotUse",
    "WeComBroadcast", "WeComBroadcastSend", "WeComContact", "WeComSteward", "WeComTag",
]
