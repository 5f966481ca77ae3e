"""Money as integer minor units or Decimal with an ISO 4217 currency: never a float."""

from __future__ import annotations

from decimal import Decimal

# Minor-unit exponents of the active ISO 4217 codes (list one). Most currencies have two
# decimals; the exceptions are listed by exponent. Funds without a minor unit (XAU, XDR,
# ...) are left out: nobody pays for a sale in them.
_TWO_DECIMALS = """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN
    BWP BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB
    EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS
    KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN
    MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD
    SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS
    UAH USD USN UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG
"""
_ZERO_DECIMALS = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_THREE_DECIMALS = "BHD IQD JOD KWD LYD OMR TND"
_FOUR_DECIMALS = "CLF UYW"

CURRENCY_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(_TWO_DECIMALS.split(), 2),
    **dict.fromkeys(_ZERO_DECIMALS.split(), 0),
    **dict.fromkeys(_THREE_DECIMALS.split(), 3),
    **dict.fromkeys(_FOUR_DECIMALS.split(), 4),
}


def is_currency(code: str) -> bool:
    """True for a known code, spelled as ISO 4217 does: three uppercase letters."""
    return isinstance(code, str) and code in CURRENCY_EXPONENTS


def exponent(currency: str) -> int:
    try:
        return CURRENCY_EXPONENTS[currency]
    except (KeyError, TypeError):
        raise ValueError(f"unknown currency {currency!r}") from None


def to_minor(amount: Decimal | int, currency: str) -> int:
    """The amount in minor units (cents for EUR); ValueError when it has more decimals
    than the currency has (1.5 JPY) or is not a finite number."""
    if isinstance(amount, bool) or not isinstance(amount, Decimal | int):
        raise TypeError(f"amount must be a Decimal or an int, not {type(amount).__name__}")
    amount = Decimal(amount)
    if not amount.is_finite():
        raise ValueError(f"amount must be finite: {amount}")
    # Integer arithmetic on the digits: exact at any size (Decimal's context would round).
    sign, digits, exp = amount.as_tuple()
    assert isinstance(exp, int)  # finite, so not 'n', 'N' or 'F'
    units = int("".join(map(str, digits)) or "0")
    shift = exp + exponent(currency)
    if shift >= 0:
        units *= 10**shift
    else:
        units, rest = divmod(units, 10**-shift)
        if rest:
            raise ValueError(f"{amount} has more decimals than {currency} allows")
    return -units if sign else units


def from_minor(minor: int, currency: str) -> Decimal:
    """The Decimal amount of `minor` units, with the currency's number of decimals."""
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise TypeError(f"minor units must be an int, not {type(minor).__name__}")
    digits = tuple(int(d) for d in str(abs(minor)))
    return Decimal((int(minor < 0), digits, -exponent(currency)))
