"""User-Agent -> device type, OS family and browser family, for the sink's enrichment.

OS and browser families come from ua-parser (uap-core's regexes, refreshed monthly through
ua-parser-builtins) on its native ua-parser-rs resolver. uap-core names devices but has no
device *type*, so that is derived here from its device family, the OS and a few UA tokens.
Known limits: iPadOS Safari asks for desktop pages and sends a Mac UA (-> "desktop"), and
Android TV boxes that name only their model in the UA come out as "tablet" or "mobile".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from ua_parser import Domain, Parser, load_builtins, load_lazy_builtins

from tracker.sink.enrich.bots import user_agent_reason

try:  # the native resolver is ~30x faster; the pure-Python one keeps us working without it
    from ua_parser.regex import Resolver as _Resolver

    _MATCHERS = load_lazy_builtins()
except ImportError:  # pragma: no cover - ua-parser-rs ships wheels for our platforms
    from ua_parser.basic import Resolver as _Resolver  # type: ignore[assignment]

    _MATCHERS = load_builtins()

# Uncached on purpose: parse_device's LRU is the one cache.
_PARSER = Parser(_Resolver(_MATCHERS))

DEVICE_TYPES = ("desktop", "mobile", "tablet", "tv", "console", "bot", "other", "")

# Token lists, each alternative led by a literal: `re` then skips most positions on one compare.
_CONSOLE = re.compile(
    r"PlayStation|PLAYSTATION|Playstation|Xbox|XBOX_ONE|Nintendo|Wii|PS3\)|OUYA|SteamDeck"
)
_TV = re.compile(
    r"SMART-?TV|Smart ?TV|HbbTV|Web0S|webOS\.TV|NetCast|TV Safari|Tizen[^)]*TV|Android ?TV"
    r"|Google ?TV|CrKey|Chromecast|Apple ?TV|tvOS|Roku|BRAVIA|AFT[A-Z]|Viera|PhilipsTV|VIDAA"
    r"|Opera TV|Inettv|SmartHub|Espial|Freebox|NETTV|CE-HTML|OMI/|TiVo|Andr0id|Large Screen"
    r"|TV[ ;)/_]|TV$|[ ;(]tv[ ;)]"
)
_TV_OS = frozenset({"Chromecast Android", "ATV OS X", "tvOS", "Roku", "Web0S"})
# "Tablet PC" is a Windows laptop feature flag, not a tablet.
_TABLET = re.compile(
    r"iPad|Tablet(?! PC)|Kindle|Silk/|KF[A-Z]{2,4}\b|PlayBook|Nexus (?:7|9|10)\b|MediaPad|MatePad"
    r"|Pad[ ;)_]|Tab[ _;)-]|Lenovo TB|SM-[TPX]\d{3}"
)
_TABLET_FAMILIES = frozenset({"iPad", "Kindle", "Kindle Fire", "Kindle Fire HD", "Galaxy Tab"})
_MOBILE = re.compile(
    r"Mobi|iPhone|iPod|Android|Windows Phone|BlackBerry|BB10|Opera Mini|KaiOS|Symbian|J2ME|MIDP"
    r"|Phone|Nokia|webOS/|Tizen"
)
_MOBILE_OS = frozenset({"iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS", "Symbian OS"})
_DESKTOP = re.compile(
    r"Windows NT|Win64|Win32|Windows 9|win10|Macintosh|Mac OS|Mac_PowerPC|X11|CrOS|Linux x86_64"
    r"|\bDesktop\b"
)
_DESKTOP_OS = frozenset(
    {
        "Windows",
        "Mac OS X",
        "Linux",
        "Ubuntu",
        "Chrome OS",
        "Fedora",
        "Debian",
        "FreeBSD",
        "OpenBSD",
        "NetBSD",
        "Solaris",
        "Red Hat",
        "SUSE",
        "Mint",
        "Arch Linux",
        "CentOS",
    }
)


@dataclass(frozen=True, slots=True)
class Device:
    device_type: str  # one of DEVICE_TYPES; "" only for an empty User-Agent
    os: str  # uap-core OS family: "Windows", "iOS", "Android", "Mac OS X", "Linux", "Other" ...
    browser: str  # uap-core browser family: "Chrome", "Mobile Safari", "Firefox", "Other" ...


EMPTY = Device("", "", "")


@lru_cache(maxsize=65536)
def parse_device(user_agent: str) -> Device:
    """Device type, OS and browser family of a User-Agent; cached by the exact string."""
    if not user_agent.strip():
        return EMPTY
    try:
        r = _PARSER(user_agent, Domain.ALL)
    except UnicodeEncodeError:  # lone surrogates: the native parser takes valid UTF-8 only
        r = _PARSER(user_agent.encode("utf-8", "replace").decode(), Domain.ALL)
    os_family = r.os.family if r.os else "Other"
    browser = r.user_agent.family if r.user_agent else "Other"
    device_family = r.device.family if r.device else ""
    return Device(_device_type(user_agent, os_family, device_family), os_family, browser)


def _device_type(ua: str, os: str, family: str) -> str:
    """One of DEVICE_TYPES from the UA, its OS family and its uap-core device family."""
    if family == "Spider" or user_agent_reason(ua):
        return "bot"
    if _CONSOLE.search(ua):
        return "console"
    if os in _TV_OS or _TV.search(ua):
        return "tv"
    if family in _TABLET_FAMILIES or _TABLET.search(ua):
        return "tablet"
    # Android phones say "Mobile"; Android tablets (and Chrome's reduced tablet UA) do not.
    # Non-browser Android clients (Dalvik, app UAs) say neither: most Android devices are phones.
    if os == "Android" or "Android" in ua:
        browser_like = "Safari/" in ua or "Firefox/" in ua
        return "tablet" if browser_like and "Mobile" not in ua else "mobile"
    if os in _MOBILE_OS or _MOBILE.search(ua):
        return "mobile"
    if os in _DESKTOP_OS or _DESKTOP.search(ua):
        return "desktop"
    return "other"
