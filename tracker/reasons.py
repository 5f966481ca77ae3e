"""Every reason the service gives for refusing, dropping or flagging something.

One closed `StrEnum` per family. Metric labels, JSON replies and stored reason columns
take their values only from these sets, never from text built out of a request, so a
client cannot grow the number of metric series. A member compares equal to its text
(`PostbackRefusal.BAD_TOKEN == "bad_token"`), which is what the JSON reply and the
ClickHouse columns hold. Adding a reason means adding a member here.
"""

from __future__ import annotations

from enum import StrEnum, unique


@unique
class PostbackRefusal(StrEnum):
    """Why a conversion report (postback, conversion pixel or the tag) was refused.

    The JSON reply carries it as `reason`; `tracker_postback_rejections_total` counts it.
    """

    # reading the request
    BODY_TOO_LARGE = "body_too_large"
    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
    INVALID_JSON = "invalid_json"
    INVALID_FIELD = "invalid_field"  # a JSON value that is not a scalar; the reply names it
    # the parameters
    MISSING_ADVERTISER = "missing_advertiser"
    INVALID_ADVERTISER = "invalid_advertiser"
    MISSING_TXID = "missing_txid"
    INVALID_TXID = "invalid_txid"
    MISSING_CLICK_ID = "missing_click_id"
    INVALID_CLICK_ID = "invalid_click_id"
    UNKNOWN_CURRENCY = "unknown_currency"
    INVALID_AMOUNT = "invalid_amount"
    NEGATIVE_AMOUNT = "negative_amount"
    AMOUNT_TOO_LARGE = "amount_too_large"
    TOO_MANY_DECIMALS = "too_many_decimals"
    UNKNOWN_STATUS = "unknown_status"
    INVALID_EVENT = "invalid_event"
    # who is asking
    UNKNOWN_ADVERTISER = "unknown_advertiser"
    MISSING_CREDENTIALS = "missing_credentials"
    BAD_TOKEN = "bad_token"
    BAD_TIMESTAMP = "bad_timestamp"
    STALE_SIGNATURE = "stale_signature"
    BAD_SIGNATURE = "bad_signature"
    # a browser conversion (the first-party tag) from a site the advertiser did not allow
    ORIGIN_NOT_ALLOWED = "origin_not_allowed"
    ORIGIN_MISSING = "origin_missing"  # neither Origin nor Referer, and an allowlist is set
    # the transaction's lifecycle
    UNKNOWN_TRANSACTION = "unknown_transaction"
    # conversion pixels (unauthenticated: what they may claim is bounded)
    PIXEL_STATUS = "pixel_status"  # a pixel may only report a new pending conversion
    RATE_LIMITED = "rate_limited"  # too many pixel conversions from this visitor or address
    ILLEGAL_TRANSITION = "illegal_transition"
    CONCURRENT_UPDATE = "concurrent_update"
    # our side
    TEMPORARILY_UNAVAILABLE = "temporarily_unavailable"  # Redis away or slow: retry later
    INTERNAL_ERROR = "internal_error"  # a bug: logged with its traceback


@unique
class PostbackOutcome(StrEnum):
    """What became of a conversion report (`tracker_conversions_total{outcome}`)."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@unique
class DuplicateReason(StrEnum):
    """The `reason` of a `duplicate` reply."""

    DUPLICATE_TRANSACTION = "duplicate_transaction"


@unique
class UnattributedReason(StrEnum):
    """Why an accepted conversion has no click (`conversions.unattributed_reason`)."""

    UNKNOWN_OR_EXPIRED_CLICK = "unknown_or_expired_click"
    CLICK_OF_OTHER_ADVERTISER = "click_of_other_advertiser"
    CLICK_OF_OTHER_VISITOR = "click_of_other_visitor"  # a pixel naming a click not its own
    NO_VISITOR = "no_visitor"
    NO_CLICK_IN_LOOKBACK = "no_click_in_lookback"


@unique
class OrphanVisit(StrEnum):
    """Why a tracking request found no link (`orphan_visits.reason`)."""

    UNKNOWN_LINK = "unknown_link"
    DISABLED_LINK = "disabled_link"
    NO_LINK_OR_CAMPAIGN = "no_link_or_campaign"  # a pixel naming neither


@unique
class BotReason(StrEnum):
    """Why a click looks automated (`clicks.bot_reason`); NONE (empty) for a person."""

    NONE = ""
    EMPTY_USER_AGENT = "empty_user_agent"
    HEAD_REQUEST = "head_request"
    LIBRARY = "library"
    CRAWLER = "crawler"


@unique
class FraudFlag(StrEnum):
    """A fraud rule that flagged an event (`clicks.fraud_flags`, `conversions.fraud_flags`)."""

    IP_FLOOD = "ip_flood"
    DUPLICATE_CLICK = "duplicate_click"
    IP_MANY_VISITORS = "ip_many_visitors"
    DATACENTER_ASN = "datacenter_asn"
    FAST_CONVERSION = "fast_conversion"


@unique
class EnrichmentDrop(StrEnum):
    """Why the sink left stream content out of ClickHouse (`tracker_sink_dropped_total`)."""

    DUPLICATE_BATCH = "duplicate_batch"  # an edge batch appended twice: stored once
    UNKNOWN_TABLE = "unknown_table"  # a stream field naming no table
    UNREADABLE_ROWS = "unreadable_rows"  # a compressed field that does not decompress


@unique
class EventDrop(StrEnum):
    """Why an edge dropped events it had answered for (`tracker_events_dropped_total`)."""

    NO_STORAGE = "no_storage"  # Redis away and the spool's disk full or read-only
    INTERNAL_ERROR = "internal_error"  # a bug in the flush loop: logged with its traceback


@unique
class DeliveryOutcome(StrEnum):
    """What one delivery attempt came to (`deliveries.outcome`,
    `tracker_deliveries_total{kind,outcome}`)."""

    DELIVERED = "delivered"  # a 2xx reply
    HTTP_ERROR = "http_error"  # any other status (redirects are not followed)
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"  # refused, reset, DNS failure, TLS error
    BLOCKED_ADDRESS = "blocked_address"  # resolves to a non-public address not allowed
    TARGET_GONE = "target_gone"  # the target was deleted or disabled before the attempt
    DEAD_LETTERED = "dead_lettered"  # counted once, when the last attempt failed


@unique
class AdminError(StrEnum):
    """The `error` code of an admin API reply (the `reason` beside it is prose)."""

    UNAUTHORIZED = "unauthorized"
    INVALID_JSON = "invalid_json"
    INVALID_LINK = "invalid_link"
    INVALID_ADVERTISER = "invalid_advertiser"
    EXISTS = "exists"
    NOT_FOUND = "not_found"
    INVALID = "invalid"  # a programme record (affiliate, campaign, payout request) refused
    CONFLICT = "conflict"  # the change breaks a rule between records (cycle, status step)
    FORBIDDEN = "forbidden"  # a valid key whose role may not do this
    INVALID_KEY = "invalid_key"
    INVALID_REPORT = "invalid_report"
    REPORT_STORE = "report_store"  # the sink's query endpoint did not answer


def flag_label(flag: FraudFlag | BotReason) -> str:
    """The `flag` label of `tracker_flagged_events_total`: a fraud rule, or `bot:<reason>`."""
    return f"bot:{flag}" if isinstance(flag, BotReason) else str(flag)


@unique
class NoCommission(StrEnum):
    """Why a conversion earns no commission (stored with it in the ledger and ClickHouse)."""

    UNKNOWN_CAMPAIGN = "unknown_campaign"
    CAMPAIGN_PAUSED = "campaign_paused"
    UNKNOWN_AFFILIATE = "unknown_affiliate"
    AFFILIATE_PAUSED = "affiliate_paused"
    AFFILIATE_BANNED = "affiliate_banned"
    FRAUD = "fraud"  # the conversion or its click is flagged, and the campaign pays no flagged
    CAP_REACHED = "cap_reached"  # past the campaign's daily or monthly conversion cap
    NO_PLAN_FOR_EVENT = "no_plan_for_event"
    NO_RATE_FOR_CURRENCY = "no_rate_for_currency"  # a fixed amount not set in that currency
    UNKNOWN_CONVERSION = "unknown_conversion"  # a status change of a conversion never seen
